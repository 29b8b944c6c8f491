"""SQLAlchemy ORM models of the ledger (names prefixed ``Sql``, as in mlflow's dbmodels).

These describe the schema that ``migrations/versions`` creates; a test upgrades an empty
database and compares the two, so change both together (and never import these classes
from a migration). Rows leave a session only as the frozen records of
:mod:`romevc.ledger.objects`, through the ``to_record`` methods.

Ids are 64-character lowercase sha256 hex. JSON-valued columns hold canonical JSON text
(``*_json``), not a JSON type, so the bytes that were hashed are the bytes stored.

Every backend must hold what any other holds (a team may move from a SQLite ledger to a
PostgreSQL one, and pulls bring in edits from both), so text goes through
:func:`check_storable` before it is written: PostgreSQL cannot store a NUL character and
enforces ``String(n)`` lengths that SQLite would silently ignore.
"""
from __future__ import annotations

import json
from collections.abc import Mapping

from sqlalchemy import (
    BigInteger, CheckConstraint, Float, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from romevc.ledger.errors import UnstorableValueError
from romevc.ledger.objects import EditRecord, RefRecord, RemoteRecord, RepoInfo, StatsMeta, canonical_json

ID = String(64)

# Every constraint has a name, so a batch migration on SQLite can find and drop it.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}


class SqlBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def check_storable(model: type[SqlBase], values: Mapping[str, object]) -> None:
    """Raise :class:`UnstorableValueError` for text in ``values`` (column key → value) that
    some backend cannot store in ``model``'s table: a NUL character, or longer than ``String(n)``."""
    for column in model.__table__.columns:
        value = values.get(column.key)
        if not isinstance(value, str):
            continue
        if "\x00" in value:
            raise UnstorableValueError(f"`{column.key}` contains a NUL character, which a PostgreSQL ledger cannot "
                                       f"store; remove it: {value[:60]!r}")
        limit = getattr(column.type, "length", None)
        if limit is not None and len(value) > limit:
            raise UnstorableValueError(f"`{column.key}` is {len(value)} characters long, and the ledger stores at "
                                       f"most {limit}; shorten it: {value[:60]!r}...")


class SqlRepo(SqlBase):
    """The single row describing the base checkpoint (``id`` is always 1)."""

    __tablename__ = "repo"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    format_version: Mapped[int] = mapped_column(Integer, nullable=False)
    base_id: Mapped[str] = mapped_column(String(512), nullable=False)
    revision: Mapped[str | None] = mapped_column(String(256), nullable=True)
    architecture: Mapped[str] = mapped_column(String(64), nullable=False)
    dtype: Mapped[str] = mapped_column(String(32), nullable=False)
    base_fingerprint: Mapped[str] = mapped_column(String(128), nullable=False)
    module_template: Mapped[str] = mapped_column(String(256), nullable=False)
    layout: Mapped[str] = mapped_column(String(16), nullable=False)
    created: Mapped[int] = mapped_column(BigInteger, nullable=False)

    def to_record(self) -> RepoInfo:
        return RepoInfo(
            base_id=self.base_id, architecture=self.architecture, dtype=self.dtype,
            base_fingerprint=self.base_fingerprint, module_template=self.module_template,
            layout=self.layout, revision=self.revision, created=self.created,
            format_version=self.format_version,
        )


class SqlEdit(SqlBase):
    """A content-addressed edit: request, provenance and the rank-k factors as float32 blobs."""

    __tablename__ = "edits"
    __table_args__ = (
        Index("ix_edits_subject", "subject"),
        Index("ix_edits_layer", "layer"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    subject: Mapped[str | None] = mapped_column(String(512), nullable=True)  # request["subject"], for blame
    request_json: Mapped[str] = mapped_column(Text, nullable=False)
    method: Mapped[str] = mapped_column(String(32), nullable=False)
    hparams_json: Mapped[str] = mapped_column(Text, nullable=False)
    seed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    templates_json: Mapped[str] = mapped_column(Text, nullable=False)
    layer: Mapped[int] = mapped_column(Integer, nullable=False)
    module: Mapped[str] = mapped_column(String(256), nullable=False)
    layout: Mapped[str] = mapped_column(String(16), nullable=False)
    rank: Mapped[int] = mapped_column(Integer, nullable=False)
    d_in: Mapped[int] = mapped_column(Integer, nullable=False)
    d_out: Mapped[int] = mapped_column(Integer, nullable=False)
    u: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    v: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    norm: Mapped[float] = mapped_column(Float, nullable=False)
    stats_id: Mapped[str | None] = mapped_column(String(128), nullable=True)  # no FK: stats may live elsewhere
    weights_fingerprint: Mapped[str | None] = mapped_column(String(128), nullable=True)
    author: Mapped[str] = mapped_column(String(256), nullable=False)
    time: Mapped[int] = mapped_column(BigInteger, nullable=False)
    notes_json: Mapped[str | None] = mapped_column(Text, nullable=True)

    @classmethod
    def from_record(cls, r: EditRecord) -> "SqlEdit":
        return cls(
            id=r.id, subject=r.subject, request_json=canonical_json(r.request), method=r.method,
            hparams_json=canonical_json(r.hparams), seed=r.seed, templates_json=canonical_json(list(r.templates)),
            layer=r.layer, module=r.module, layout=r.layout, rank=r.rank, d_in=r.d_in, d_out=r.d_out,
            u=r.u, v=r.v, norm=r.norm, stats_id=r.stats_id, weights_fingerprint=r.weights_fingerprint,
            author=r.author, time=r.time, notes_json=canonical_json(r.notes) if r.notes else None,
        )

    def to_record(self) -> EditRecord:
        return EditRecord(
            id=self.id, request=json.loads(self.request_json), method=self.method,
            hparams=json.loads(self.hparams_json), seed=self.seed, templates=tuple(json.loads(self.templates_json)),
            layer=self.layer, module=self.module, layout=self.layout, rank=self.rank, d_in=self.d_in,
            d_out=self.d_out, u=self.u, v=self.v, norm=self.norm, stats_id=self.stats_id,
            weights_fingerprint=self.weights_fingerprint, author=self.author, time=self.time,
            notes=json.loads(self.notes_json) if self.notes_json else {},
        )


class SqlCommit(SqlBase):
    """A content-addressed commit; its parents and edit set live in the two tables below."""

    __tablename__ = "commits"
    __table_args__ = (Index("ix_commits_time", "time"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    message: Mapped[str] = mapped_column(Text, nullable=False)
    author: Mapped[str] = mapped_column(String(256), nullable=False)
    time: Mapped[int] = mapped_column(BigInteger, nullable=False)  # UTC seconds
    tz: Mapped[int] = mapped_column(Integer, nullable=False)  # seconds east of UTC
    kind: Mapped[str] = mapped_column(String(32), nullable=False)


class SqlCommitParent(SqlBase):
    """``parent`` is the ``position``-th parent of ``commit_id`` (0 = first parent)."""

    __tablename__ = "commit_parents"
    __table_args__ = (
        UniqueConstraint("commit_id", "parent_id"),
        Index("ix_commit_parents_parent_id", "parent_id"),
    )

    commit_id: Mapped[str] = mapped_column(
        ID, ForeignKey("commits.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[str] = mapped_column(
        ID, ForeignKey("commits.id"), nullable=False
    )


class SqlCommitEdit(SqlBase):
    """``edit_id`` is the ``position``-th edit of the active edit set of ``commit_id``."""

    __tablename__ = "commit_edits"
    __table_args__ = (
        UniqueConstraint("commit_id", "edit_id"),
        Index("ix_commit_edits_edit_id", "edit_id"),
    )

    commit_id: Mapped[str] = mapped_column(
        ID, ForeignKey("commits.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    edit_id: Mapped[str] = mapped_column(ID, ForeignKey("edits.id"), nullable=False)


class SqlRef(SqlBase):
    """A ref: a branch or tag (``target`` set) or ``HEAD`` (``target`` or ``symbolic`` set)."""

    __tablename__ = "refs"
    __table_args__ = (
        CheckConstraint("(target IS NULL) <> (symbolic IS NULL)", name="target_xor_symbolic"),
    )

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    target: Mapped[str | None] = mapped_column(ID, ForeignKey("commits.id"), nullable=True)
    symbolic: Mapped[str | None] = mapped_column(String(255), nullable=True)

    def to_record(self) -> RefRecord:
        return RefRecord(name=self.name, target=self.target, symbolic=self.symbolic)


class SqlRemote(SqlBase):
    """A remote (Hub repo or git URL) and the remote tip last seen per branch (JSON object)."""

    __tablename__ = "remotes"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    seen_json: Mapped[str] = mapped_column(Text, nullable=False)

    def to_record(self) -> RemoteRecord:
        return RemoteRecord(name=self.name, url=self.url, seen=json.loads(self.seen_json))


class SqlStats(SqlBase):
    """Metadata of cached second-moment statistics; the tensors live in safetensors files."""

    __tablename__ = "stats"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_fingerprint: Mapped[str] = mapped_column(String(128), nullable=False)
    module: Mapped[str] = mapped_column(String(256), nullable=False)
    corpus_id: Mapped[str] = mapped_column(String(256), nullable=False)
    token_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    dtype: Mapped[str] = mapped_column(String(32), nullable=False)
    location: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[int] = mapped_column(BigInteger, nullable=False)

    def to_record(self) -> StatsMeta:
        return StatsMeta(
            id=self.id, model_fingerprint=self.model_fingerprint, module=self.module, corpus_id=self.corpus_id,
            token_count=self.token_count, dtype=self.dtype, location=self.location, created=self.created,
        )
