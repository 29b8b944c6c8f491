"""Branches, tags and HEAD: the ref verbs of :class:`romevc.repo.Repo`, as functions of a ledger.

Refs move only by compare-and-swap in the ledger; creating a name that exists is refused
with a message instead of a CAS failure, and ``checkout -b`` is one transaction.
"""
from __future__ import annotations

from romevc.ledger import Head, Ledger, branch_ref, tag_ref
from romevc.ledger.errors import RefFormatError, UnknownRefError
from romevc.ledger.refs import checked_out_error
from romevc.porcelain.errors import RepoError
from romevc.porcelain.reports import BranchInfo


def branches(ledger: Ledger) -> list[BranchInfo]:
    head = ledger.head()
    return [BranchInfo(r.short_name, r.target, r.short_name == head.branch)
            for r in ledger.list_refs("refs/heads/")]


def _create_ref(ledger: Ledger, ref_name: str, kind: str, name: str, start: str) -> BranchInfo:
    """A new ref at ``start``; an existing name is refused, never moved."""
    if ledger.get_ref(ref_name) is not None:
        raise RepoError(f"a {kind} named {name!r} already exists")
    commit = ledger.resolve(start)
    ledger.update_ref(ref_name, commit, None)
    return BranchInfo(name, commit, False)


def branch(ledger: Ledger, name: str, start: str = "HEAD") -> BranchInfo:
    """A new branch at ``start`` (refuses an existing name)."""
    return _create_ref(ledger, branch_ref(name), "branch", name, start)


def delete_branch(ledger: Ledger, name: str, *, force: bool = False) -> str:
    """Delete a branch; unless ``force``, only one whose tip HEAD already contains. Returns its tip.

    A branch that any folder sharing the ledger has checked out is refused even with ``force``,
    as git refuses one checked out in another worktree; the ledger checks again as it deletes.
    """
    ref = branch_ref(name)
    record = ledger.get_ref(ref)
    if record is None:
        raise UnknownRefError(f"no branch named {name!r}; see `romevc branch`")
    heads = ledger.heads()
    refused = checked_out_error(ref, [n for n, h in heads.items() if h.branch == record.short_name],
                                ledger.head_name)
    if refused is not None:
        raise refused
    head = ledger.head()
    if not force and (head.commit is None or not ledger.is_ancestor(record.target, head.commit)):
        raise RepoError(f"branch {name!r} is not merged into HEAD; delete it anyway with -D")
    ledger.delete_ref(ref, record.target)
    return record.target


def checkout(ledger: Ledger, ref: str | None, *, create: str | None = None, orphan: str | None = None) -> Head:
    """Attach HEAD to a branch, or detach it at a commit; ``create`` makes a branch at ``ref``
    first; ``orphan`` attaches HEAD to a new, unborn branch (its first commit has no parent).

    Only HEAD moves: the weights are materialised when a command needs them.
    """
    if orphan is not None:
        if ledger.get_ref(branch_ref(orphan)) is not None:
            raise RepoError(f"a branch named {orphan!r} already exists")
        ledger.set_head_symbolic(orphan)
        return ledger.head()
    if ref is None:
        raise ValueError("`ref` is required unless `orphan` is given")
    if create is not None:
        name = branch_ref(create)
        if ledger.get_ref(name) is not None:
            raise RepoError(f"a branch named {create!r} already exists")
        commit = ledger.resolve(ref)
        with ledger.transaction():
            ledger.update_ref(name, commit, None)
            ledger.set_head_symbolic(create)
        return ledger.head()
    try:
        is_branch = ledger.get_ref(branch_ref(ref)) is not None
    except RefFormatError:
        is_branch = False
    if is_branch:
        ledger.set_head_symbolic(ref)
    else:
        ledger.set_head_detached(ledger.resolve(ref))
    return ledger.head()


def tags(ledger: Ledger) -> list[BranchInfo]:
    return [BranchInfo(r.short_name, r.target, False) for r in ledger.list_refs("refs/tags/")]


def tag(ledger: Ledger, name: str, ref: str = "HEAD") -> BranchInfo:
    return _create_ref(ledger, tag_ref(name), "tag", name, ref)


def delete_tag(ledger: Ledger, name: str) -> str:
    record = ledger.get_ref(tag_ref(name))
    if record is None:
        raise UnknownRefError(f"no tag named {name!r}; see `romevc tag`")
    ledger.delete_ref(tag_ref(name), record.target)
    return record.target
