"""The initial ledger schema: repo, edits, commits and their parents and edit sets, refs,
remotes, statistics metadata.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Spelled out by hand (no ORM imports): this file describes revision 0001 forever, whatever
romevc/ledger/models.py says later. Names go through ``op.f()``: they are final, not
templates for the naming convention of the models' metadata.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "repo",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("format_version", sa.Integer(), nullable=False),
        sa.Column("base_id", sa.String(512), nullable=False),
        sa.Column("revision", sa.String(256), nullable=True),
        sa.Column("architecture", sa.String(64), nullable=False),
        sa.Column("dtype", sa.String(32), nullable=False),
        sa.Column("base_fingerprint", sa.String(128), nullable=False),
        sa.Column("module_template", sa.String(256), nullable=False),
        sa.Column("layout", sa.String(16), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_repo")),
        sa.CheckConstraint("id = 1", name=op.f("ck_repo_single_row")),
    )
    op.create_table(
        "edits",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(512), nullable=True),
        sa.Column("request_json", sa.Text(), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("hparams_json", sa.Text(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("templates_json", sa.Text(), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("module", sa.String(256), nullable=False),
        sa.Column("layout", sa.String(16), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("d_in", sa.Integer(), nullable=False),
        sa.Column("d_out", sa.Integer(), nullable=False),
        sa.Column("u", sa.LargeBinary(), nullable=False),
        sa.Column("v", sa.LargeBinary(), nullable=False),
        sa.Column("norm", sa.Float(), nullable=False),
        sa.Column("stats_id", sa.String(128), nullable=True),
        sa.Column("weights_fingerprint", sa.String(128), nullable=True),
        sa.Column("author", sa.String(256), nullable=False),
        sa.Column("time", sa.BigInteger(), nullable=False),
        sa.Column("notes_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_edits")),
    )
    op.create_index(op.f("ix_edits_subject"), "edits", ["subject"])
    op.create_index(op.f("ix_edits_layer"), "edits", ["layer"])
    op.create_table(
        "commits",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("author", sa.String(256), nullable=False),
        sa.Column("time", sa.BigInteger(), nullable=False),
        sa.Column("tz", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commits")),
    )
    op.create_index(op.f("ix_commits_time"), "commits", ["time"])
    op.create_table(
        "commit_parents",
        sa.Column("commit_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("commit_id", "position", name=op.f("pk_commit_parents")),
        sa.UniqueConstraint("commit_id", "parent_id", name=op.f("uq_commit_parents_commit_id_parent_id")),
        sa.ForeignKeyConstraint(
            ["commit_id"], ["commits.id"], name=op.f("fk_commit_parents_commit_id"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["parent_id"], ["commits.id"], name=op.f("fk_commit_parents_parent_id")),
    )
    op.create_index(op.f("ix_commit_parents_parent_id"), "commit_parents", ["parent_id"])
    op.create_table(
        "commit_edits",
        sa.Column("commit_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("edit_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("commit_id", "position", name=op.f("pk_commit_edits")),
        sa.UniqueConstraint("commit_id", "edit_id", name=op.f("uq_commit_edits_commit_id_edit_id")),
        sa.ForeignKeyConstraint(
            ["commit_id"], ["commits.id"], name=op.f("fk_commit_edits_commit_id"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["edit_id"], ["edits.id"], name=op.f("fk_commit_edits_edit_id")),
    )
    op.create_index(op.f("ix_commit_edits_edit_id"), "commit_edits", ["edit_id"])
    op.create_table(
        "refs",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("target", sa.String(64), nullable=True),
        sa.Column("symbolic", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_refs")),
        sa.CheckConstraint("(target IS NULL) <> (symbolic IS NULL)", name=op.f("ck_refs_target_xor_symbolic")),
        sa.ForeignKeyConstraint(["target"], ["commits.id"], name=op.f("fk_refs_target")),
    )
    op.create_table(
        "remotes",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("seen_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_remotes")),
    )
    op.create_table(
        "stats",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("model_fingerprint", sa.String(128), nullable=False),
        sa.Column("module", sa.String(256), nullable=False),
        sa.Column("corpus_id", sa.String(256), nullable=False),
        sa.Column("token_count", sa.BigInteger(), nullable=False),
        sa.Column("dtype", sa.String(32), nullable=False),
        sa.Column("location", sa.Text(), nullable=True),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stats")),
    )


def downgrade() -> None:
    # Children before parents, so no foreign key ever points at a dropped table.
    op.drop_table("stats")
    op.drop_table("remotes")
    op.drop_table("refs")
    op.drop_index(op.f("ix_commit_edits_edit_id"), table_name="commit_edits")
    op.drop_table("commit_edits")
    op.drop_index(op.f("ix_commit_parents_parent_id"), table_name="commit_parents")
    op.drop_table("commit_parents")
    op.drop_index(op.f("ix_commits_time"), table_name="commits")
    op.drop_table("commits")
    op.drop_index(op.f("ix_edits_layer"), table_name="edits")
    op.drop_index(op.f("ix_edits_subject"), table_name="edits")
    op.drop_table("edits")
    op.drop_table("repo")
