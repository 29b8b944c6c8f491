"""Queries shared by the ``Ledger`` methods, as functions of an open session.

Bulk paths throughout: ids are looked up and inserted in chunks of :data:`CHUNK`, never
one statement per object, so storing or reading ten thousand commits stays fast.
"""
from __future__ import annotations

from typing import Iterator, Sequence, TypeVar

from sqlalchemy import insert, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from romevc.ledger.errors import UnknownObjectError
from romevc.ledger.models import (
    SqlCommit,
    SqlCommitEdit,
    SqlCommitParent,
    SqlEdit,
    check_storable,
)
from romevc.ledger.objects import BlameEntry, CommitRecord, EditRecord

T = TypeVar("T")
CHUNK = 500  # ids per IN (...) list, far below every backend's bound-parameter limit


def chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), CHUNK):
        yield items[i:i + CHUNK]


def existing(s: Session, column: InstrumentedAttribute, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` are present in ``column``."""
    found: set[str] = set()
    for chunk in chunks(sorted(set(ids))):
        found.update(s.execute(select(column).where(column.in_(chunk))).scalars())
    return found


def insert_edits(s: Session, records: Sequence[EditRecord]) -> int:
    """Insert the edits not stored yet; returns how many were new."""
    stored = existing(s, SqlEdit.id, [r.id for r in records])
    new = {r.id: r for r in records if r.id not in stored}
    if new:
        columns = [c.key for c in SqlEdit.__table__.columns]
        rows = [{c: getattr(row, c) for c in columns} for row in map(SqlEdit.from_record, new.values())]
        for row in rows:
            check_storable(SqlEdit, row)
        s.execute(insert(SqlEdit), rows)
    return len(new)


def insert_commits(s: Session, records: Sequence[CommitRecord]) -> int:
    """Insert the commits not stored yet; returns how many were new.

    Parents may come from the same batch in any order (all commit rows go in before any
    parent row); every other parent and every edit must already be stored.
    """
    stored = existing(s, SqlCommit.id, [r.id for r in records])
    new = list({r.id: r for r in records if r.id not in stored}.values())
    if not new:
        return 0
    batch = {r.id for r in new}
    parents = sorted({p for r in new for p in r.parents} - batch - stored)
    missing = set(parents) - existing(s, SqlCommit.id, parents)
    if missing:
        raise UnknownObjectError(f"parent commit(s) {', '.join(sorted(missing))} are not in this ledger; store them first")
    edits = sorted({e for r in new for e in r.edit_ids})
    missing = set(edits) - existing(s, SqlEdit.id, edits)
    if missing:
        raise UnknownObjectError(f"edit(s) {', '.join(sorted(missing))} are not in this ledger; store them first")
    rows = [dict(id=r.id, message=r.message, author=r.author, time=r.time, tz=r.tz, kind=r.kind) for r in new]
    for row in rows:
        check_storable(SqlCommit, row)
    s.execute(insert(SqlCommit), rows)
    parent_rows = [dict(commit_id=r.id, position=i, parent_id=p) for r in new for i, p in enumerate(r.parents)]
    if parent_rows:
        s.execute(insert(SqlCommitParent), parent_rows)
    edit_rows = [dict(commit_id=r.id, position=i, edit_id=e) for r in new for i, e in enumerate(r.edit_ids)]
    if edit_rows:
        s.execute(insert(SqlCommitEdit), edit_rows)
    return len(new)


def load_commits(s: Session, ids: Sequence[str]) -> dict[str, CommitRecord]:
    """Records of those ``ids`` that exist: three queries per chunk, whatever the count."""
    out: dict[str, CommitRecord] = {}
    for chunk in chunks(list(dict.fromkeys(ids))):
        parents: dict[str, list[str]] = {c: [] for c in chunk}
        for c, p in s.execute(select(SqlCommitParent.commit_id, SqlCommitParent.parent_id)
                              .where(SqlCommitParent.commit_id.in_(chunk))
                              .order_by(SqlCommitParent.commit_id, SqlCommitParent.position)):
            parents[c].append(p)
        edits: dict[str, list[str]] = {c: [] for c in chunk}
        for c, e in s.execute(select(SqlCommitEdit.commit_id, SqlCommitEdit.edit_id)
                              .where(SqlCommitEdit.commit_id.in_(chunk))
                              .order_by(SqlCommitEdit.commit_id, SqlCommitEdit.position)):
            edits[c].append(e)
        for c, message, author, time, tz, kind in s.execute(
            select(SqlCommit.id, SqlCommit.message, SqlCommit.author, SqlCommit.time, SqlCommit.tz, SqlCommit.kind)
            .where(SqlCommit.id.in_(chunk))
        ):
            out[c] = CommitRecord(id=c, parents=tuple(parents[c]), edit_ids=tuple(edits[c]), message=message,
                                  author=author, time=time, tz=tz, kind=kind)
    return out


def blame(s: Session, chain: Sequence[str], *, subject: str | None, layer: int | None) -> list[BlameEntry]:
    """Along ``chain`` (oldest first, each the first parent of the next), the commits whose
    set of matching edits differs from their predecessor's: what each added and removed.

    One query fetches every (commit, matching edit) pair; matching edits are few, so this
    is cheap even on a long history.
    """
    stmt = (select(SqlCommitEdit.commit_id, SqlCommitEdit.edit_id)
            .join(SqlEdit, SqlEdit.id == SqlCommitEdit.edit_id)
            .order_by(SqlCommitEdit.commit_id, SqlCommitEdit.position))
    if subject is not None:
        stmt = stmt.where(SqlEdit.subject == subject)
    if layer is not None:
        stmt = stmt.where(SqlEdit.layer == layer)
    sets: dict[str, list[str]] = {}
    for c, e in s.execute(stmt):
        sets.setdefault(c, []).append(e)
    changes: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []
    before: list[str] = []
    for c in chain:
        now = sets.get(c, [])
        now_set, before_set = set(now), set(before)
        added = tuple(e for e in now if e not in before_set)
        removed = tuple(e for e in before if e not in now_set)
        if added or removed:
            changes.append((c, added, removed))
        before = now
    records = load_commits(s, [c for c, _, _ in changes])
    return [BlameEntry(records[c], added, removed) for c, added, removed in changes]
