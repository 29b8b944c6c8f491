"""``verify_all``: recompute every id and check every reference, like ``git fsck``.

It reports rather than raises, so one bad blob does not hide the next. Edits stream in
batches (their blobs are the bulk of a ledger); commits, parents and edit sets are read
in id order and merged, one query each, never one query per commit.

Every folder sharing the ledger has a HEAD row (``HEAD``, ``worktrees/<id>/HEAD``); each is
checked like any ref, and the main HEAD and the verifying folder's own must exist.
"""
from __future__ import annotations

from itertools import groupby
from typing import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from romevc.ledger.errors import CorruptObjectError
from romevc.ledger.models import SqlCommit, SqlCommitEdit, SqlCommitParent, SqlEdit, SqlRef
from romevc.ledger.objects import CommitRecord, VerifyReport
from romevc.ledger.refs import HEAD, HEADS, is_head_name

_BATCH = 256


def _grouped(session: Session, stmt) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(commit id, ids in position order) from a (commit_id, other_id) query sorted by both."""
    rows = session.execute(stmt.execution_options(yield_per=4096))
    for commit, group in groupby(rows, key=lambda row: row[0]):
        yield commit, tuple(row[1] for row in group)


def _merged(groups: Iterator[tuple[str, tuple[str, ...]]]):
    """A lookup that walks ``groups`` forward as commits are asked for in increasing id order."""
    pending = next(groups, None)

    def lookup(commit: str) -> tuple[str, ...]:
        nonlocal pending
        while pending is not None and pending[0] < commit:
            pending = next(groups, None)
        return pending[1] if pending is not None and pending[0] == commit else ()

    return lookup


def verify_all(session: Session, head_name: str = HEAD) -> VerifyReport:
    problems: list[str] = []

    n_edits = 0
    for row in session.execute(select(SqlEdit).order_by(SqlEdit.id).execution_options(yield_per=_BATCH)).scalars():
        n_edits += 1
        try:
            row.to_record().verify()
        except (CorruptObjectError, ValueError) as exc:
            problems.append(str(exc))
        session.expunge(row)  # keep the identity map small: blobs are large

    parents_of = _merged(_grouped(session, select(SqlCommitParent.commit_id, SqlCommitParent.parent_id)
                                  .order_by(SqlCommitParent.commit_id, SqlCommitParent.position)))
    edits_of = _merged(_grouped(session, select(SqlCommitEdit.commit_id, SqlCommitEdit.edit_id)
                                .order_by(SqlCommitEdit.commit_id, SqlCommitEdit.position)))
    n_commits = 0
    commits = session.execute(
        select(SqlCommit.id, SqlCommit.message, SqlCommit.author, SqlCommit.time, SqlCommit.tz, SqlCommit.kind)
        .order_by(SqlCommit.id)
    )
    for cid, message, author, time, tz, kind in commits:
        n_commits += 1
        try:
            CommitRecord(id=cid, parents=parents_of(cid), edit_ids=edits_of(cid), message=message,
                         author=author, time=time, tz=tz, kind=kind).verify()
        except (CorruptObjectError, ValueError) as exc:
            problems.append(str(exc))

    # Dangling references: foreign keys forbid them, but a ledger edited by hand with
    # foreign keys off (SQLite's default) can still hold some.
    parent = aliased(SqlCommit)
    for cid, pid in session.execute(
        select(SqlCommitParent.commit_id, SqlCommitParent.parent_id)
        .outerjoin(parent, parent.id == SqlCommitParent.parent_id).where(parent.id.is_(None))
    ):
        problems.append(f"commit {cid} names parent {pid}, which is missing")
    for cid, eid in session.execute(
        select(SqlCommitEdit.commit_id, SqlCommitEdit.edit_id)
        .outerjoin(SqlEdit, SqlEdit.id == SqlCommitEdit.edit_id).where(SqlEdit.id.is_(None))
    ):
        problems.append(f"commit {cid} lists edit {eid}, which is missing")

    refs = session.execute(select(SqlRef.name, SqlRef.target, SqlRef.symbolic).order_by(SqlRef.name)).all()
    existing_targets = set(session.execute(
        select(SqlCommit.id).where(SqlCommit.id.in_({t for _, t, _ in refs if t}))
    ).scalars())
    for name, target, symbolic in refs:
        if target is not None and target not in existing_targets:
            problems.append(f"ref {name} points at commit {target}, which is missing")
        if symbolic is not None and not symbolic.startswith(HEADS):
            problems.append(f"ref {name} is symbolic to {symbolic}, which is not a branch")
        if symbolic is not None and not is_head_name(name):
            problems.append(f"ref {name} is symbolic to {symbolic}, but only a HEAD may be symbolic")
    names = {name for name, _, _ in refs}
    for head in dict.fromkeys((HEAD, head_name)):
        if head not in names:
            problems.append(f"{head} is missing" if head == HEAD else f"this folder's HEAD {head} is missing")
    return VerifyReport(edits=n_edits, commits=n_commits, refs=len(refs), problems=tuple(problems))
