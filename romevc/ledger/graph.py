"""The commit graph in memory: loaded in one query, walked in Python.

A ledger holds thousands of commits at most tens of thousands; one query for every
(commit, time, parent) row is a few milliseconds, where a query per commit walked would
be seconds. History walks (log, ancestry, merge bases, blame) all start here.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from romevc.ledger.models import SqlCommit, SqlCommitParent


@dataclass(frozen=True)
class CommitGraph:
    parents: dict[str, tuple[str, ...]]  # commit -> parents, first parent first
    times: dict[str, int]  # commit -> UTC seconds

    @classmethod
    def load(cls, session: Session) -> "CommitGraph":
        rows = session.execute(
            select(SqlCommit.id, SqlCommit.time, SqlCommitParent.parent_id)
            .outerjoin(SqlCommitParent, SqlCommitParent.commit_id == SqlCommit.id)
            .order_by(SqlCommit.id, SqlCommitParent.position)
        )
        parents: dict[str, list[str]] = {}
        times: dict[str, int] = {}
        for commit, time, parent in rows:
            times[commit] = time
            bucket = parents.setdefault(commit, [])
            if parent is not None:
                bucket.append(parent)
        return cls({c: tuple(p) for c, p in parents.items()}, times)

    def __contains__(self, commit: str) -> bool:
        return commit in self.times

    def first_parent_chain(self, start: str, limit: int | None = None) -> list[str]:
        """``start``, its first parent, that one's first parent... newest first."""
        chain: list[str] = []
        current: str | None = start
        while current is not None and (limit is None or len(chain) < limit):
            chain.append(current)
            ps = self.parents.get(current, ())
            current = ps[0] if ps else None
        return chain

    def ancestors(self, start: str) -> set[str]:
        """``start`` and everything reachable from it through parents."""
        seen = {start}
        stack = [start]
        while stack:
            for parent in self.parents.get(stack.pop(), ()):
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return seen

    def date_order(self, start: str, limit: int | None = None) -> list[str]:
        """Ancestors of ``start``, newest first, never a parent before any of its children.

        git's ``--date-order``: Kahn's algorithm over the reachable subgraph, picking the
        newest ready commit; ties go to the commit discovered first from ``start``.
        """
        order: dict[str, int] = {start: 0}  # discovery index, the tie-break
        children_left: dict[str, int] = {start: 0}
        stack = [start]
        while stack:
            for parent in self.parents.get(stack.pop(), ()):
                children_left[parent] = children_left.get(parent, 0) + 1
                if parent not in order:
                    order[parent] = len(order)
                    stack.append(parent)
        heap = [(-self.times[start], 0, start)]
        out: list[str] = []
        while heap and (limit is None or len(out) < limit):
            _, _, commit = heapq.heappop(heap)
            out.append(commit)
            for parent in self.parents.get(commit, ()):
                children_left[parent] -= 1
                if children_left[parent] == 0:
                    heapq.heappush(heap, (-self.times[parent], order[parent], parent))
        return out

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """Whether ``ancestor`` is ``descendant`` or reachable from it (a fast-forward test)."""
        return ancestor in self.ancestors(descendant)

    def merge_bases(self, a: str, b: str) -> list[str]:
        """The best common ancestors of ``a`` and ``b`` (git merge-base --all), newest first.

        The common ancestors are closed under "parent of", so the redundant ones (proper
        ancestors of another common ancestor) are exactly the parents of common ancestors.
        """
        common = self.ancestors(a) & self.ancestors(b)
        redundant = {p for c in common for p in self.parents.get(c, ())}
        return sorted(common - redundant, key=lambda c: (-self.times[c], c))
