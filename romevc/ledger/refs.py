"""Ref names, compare-and-swap updates and revision parsing, as functions of an open session.

Refs follow git: branches are ``refs/heads/<name>``, tags ``refs/tags/<name>``; ``HEAD`` is
either symbolic (``ref: refs/heads/main``, possibly unborn: the branch has no commits
yet) or detached (a commit id).

Every folder sharing a ledger has its own HEAD, as every git worktree does: the folder that
created the ledger uses the row ``HEAD``, a folder that joined it later the row
``worktrees/<id>/HEAD`` (outside ``refs/``, so no branch or tag listing shows it). The
functions below take the name of the HEAD they act for; a branch any HEAD is attached to
cannot be deleted. A ref moves only by compare-and-swap: the update names
the value it expects to replace, and fails with :class:`RefConflictError` when someone
else moved the ref first, which is how git refuses a non-fast-forward push.

The CAS is a conditional ``UPDATE ... WHERE target = :expected`` (or an ``INSERT`` that
must not collide), so it is atomic on every backend, not only under SQLite's write lock.
"""
from __future__ import annotations

import re
from typing import Final, Union

from sqlalchemy import delete, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from romevc.ledger.errors import (
    AmbiguousRefError, LedgerError, RefConflictError, RefFormatError, UnknownObjectError, UnknownRefError,
)
from romevc.ledger.models import SqlCommit, SqlCommitParent, SqlRef
from romevc.ledger.objects import Head, RefRecord, is_full_id


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Final = _Any()  # expected_old for an unconditional ref update
Expected = Union[str, None, _Any]  # what a CAS expects a ref to hold: a commit id, "absent", or ANY
HEAD = "HEAD"
HEADS, TAGS, REMOTES = "refs/heads/", "refs/tags/", "refs/remotes/"
WORKTREES = "worktrees/"  # worktrees/<id>/HEAD: the HEAD of a folder that joined a shared ledger
_WORKTREE_ID = re.compile(r"[0-9a-z]{1,64}")
MIN_SHORT_ID = 4
_RESERVED = (HEAD, "@")  # short names that resolve() reads as HEAD, so no branch or tag can use them
_ID_PREFIX_SCAN = 10  # candidates listed in an AmbiguousRefError

# git check-ref-format, component by component: no control characters, space, ~^:?*[\,
# no "..", "@{", leading ".", trailing ".lock", empty component or trailing ".".
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{")
_SUFFIX_OP = re.compile(r"([~^])([0-9]*)")
MAX_PARENT = 2**31  # ^N beyond this names no parent of any commit (and would overflow SQL integers)


def _is_unicode(text: str) -> bool:
    """Whether ``text`` encodes to UTF-8, as every value the ledger stores or looks up must."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_ref_name(name: str) -> str:
    """Return ``name`` if git would accept it as a full ref name (``refs/...``), else raise."""
    problem = None
    if not isinstance(name, str) or not name.startswith("refs/") or len(name) > 255:
        problem = "must start with 'refs/' and be at most 255 characters"
    elif not _is_unicode(name):
        problem = "is not valid Unicode text (it holds a lone surrogate)"
    elif _BAD_CHARS.search(name):
        problem = "contains a space, a control character, one of ~^:?*[\\, '..' or '@{'"
    elif any(not c or c.startswith(".") or c.endswith(".lock") for c in name.split("/")) or name.endswith("."):
        problem = "has an empty component, a component starting with '.', ending with '.lock', or ends with '.'"
    elif name.count("/") < 2:
        problem = "needs a kind and a name, like refs/heads/<branch> or refs/tags/<tag>"
    if problem:
        raise RefFormatError(f"invalid ref name {name!r}: it {problem}; pick another name")
    return name


def worktree_head(worktree: str) -> str:
    """``3f2a…`` → ``worktrees/3f2a…/HEAD``, the HEAD row of a folder that joined a shared ledger."""
    if not isinstance(worktree, str) or not _WORKTREE_ID.fullmatch(worktree):
        raise RefFormatError(f"invalid worktree id {worktree!r}: it must be 1 to 64 lowercase letters and digits; "
                             "fix `worktree` in .romevc/config.json")
    return f"{WORKTREES}{worktree}/{HEAD}"


def is_head_name(name: str) -> bool:
    """Whether ``name`` is a HEAD row: ``HEAD`` or ``worktrees/<id>/HEAD``."""
    if name == HEAD:
        return True
    worktree = name.removeprefix(WORKTREES).removesuffix("/" + HEAD)
    return name.startswith(WORKTREES) and name.endswith("/" + HEAD) and bool(_WORKTREE_ID.fullmatch(worktree))


def check_head_name(name: str) -> str:
    if not is_head_name(name):
        raise RefFormatError(f"invalid HEAD name {name!r}: it must be HEAD or worktrees/<id>/HEAD")
    return name


def _short_ref(prefix: str, name: str, kind: str) -> str:
    if name in _RESERVED:
        raise RefFormatError(f"{name!r} cannot name a {kind}: it always means HEAD; pick another name")
    return check_ref_name(name if name.startswith(prefix) else prefix + name)


def branch_ref(branch: str) -> str:
    """``main`` → ``refs/heads/main`` (a full ``refs/heads/...`` name passes through)."""
    return _short_ref(HEADS, branch, "branch")


def tag_ref(tag: str) -> str:
    return _short_ref(TAGS, tag, "tag")


def _ref_row(session: Session, name: str) -> SqlRef | None:
    return session.execute(select(SqlRef).where(SqlRef.name == name)).scalar_one_or_none()


def get_ref(session: Session, name: str) -> RefRecord | None:
    row = _ref_row(session, name)
    return row.to_record() if row else None


def read_head(session: Session, head: str = HEAD) -> Head:
    row = _ref_row(session, head)
    if row is None:
        if head != HEAD:
            raise LedgerError(f"this folder's HEAD ({head}) is not in the ledger; its row was deleted: run "
                              "`romevc init --ledger URL` in a new folder to join the ledger again")
        raise LedgerError("this ledger has no HEAD; run `romevc verify` and restore it from a backup")
    if row.symbolic is None:
        return Head(None, row.target)
    target = session.execute(select(SqlRef.target).where(SqlRef.name == row.symbolic)).scalar_one_or_none()
    return Head(row.symbolic.removeprefix(HEADS), target)


def commit_exists(session: Session, commit: str) -> bool:
    return session.execute(select(SqlCommit.id).where(SqlCommit.id == commit)).first() is not None


def require_commit(session: Session, commit: str) -> None:
    if not is_full_id(commit) or not commit_exists(session, commit):
        raise UnknownObjectError(f"commit {commit!r} is not in this ledger; pass a full id from `romevc log`")


def compare_and_swap(session: Session, name: str, new: str, expected: Expected) -> RefRecord:
    """Point ``name`` at ``new`` if it still points at ``expected`` (None: must not exist)."""
    require_commit(session, new)
    if expected is ANY:
        if session.execute(update(SqlRef).where(SqlRef.name == name).values(target=new)).rowcount == 0:
            session.execute(insert(SqlRef).values(name=name, target=new, symbolic=None))
    elif expected is None:
        try:
            with session.begin_nested():
                session.execute(insert(SqlRef).values(name=name, target=new, symbolic=None))
        except IntegrityError:
            raise _conflict(session, name, expected) from None
    else:
        stmt = update(SqlRef).where(SqlRef.name == name, SqlRef.target == expected).values(target=new)
        if session.execute(stmt).rowcount != 1:
            raise _conflict(session, name, expected)
    return RefRecord(name=name, target=new)


def _conflict(session: Session, name: str, expected: Expected) -> RefConflictError:
    current = session.execute(select(SqlRef.target).where(SqlRef.name == name)).scalar_one_or_none()
    was = "did not exist" if current is None else f"was at {current[:12]}"
    want = "to not exist yet" if expected is None else f"to be at {str(expected)[:12]}"
    return RefConflictError(
        f"{name} moved: expected it {want}, but it {was} (someone else updated it); "
        "look at the new history and try again"
    )


def heads(session: Session) -> dict[str, Head]:
    """Every HEAD row of the ledger (``HEAD`` and each ``worktrees/<id>/HEAD``) by name."""
    rows = session.execute(select(SqlRef.name).where(SqlRef.name.startswith(WORKTREES, autoescape=True)
                                                     | (SqlRef.name == HEAD))).scalars()
    return {name: read_head(session, name) for name in sorted(rows) if is_head_name(name)}


def checked_out_error(name: str, holders: list[str], head: str) -> RefConflictError | None:
    """Why ``name`` may not be deleted when the HEADs ``holders`` are attached to it (None: it may).

    ``head`` is the HEAD of the folder asking: its own HEAD is named as such, any other is
    another folder sharing the ledger, as git refuses a branch checked out in another worktree.
    """
    if head in holders:
        return RefConflictError(f"cannot delete {name}: HEAD points at it; switch to another branch first")
    if holders:
        where = ", ".join("the folder that created the ledger" if h == HEAD else
                          f"worktree {h.removeprefix(WORKTREES).removesuffix('/' + HEAD)}" for h in holders)
        return RefConflictError(f"cannot delete {name}: it is checked out in another folder sharing this ledger "
                                f"({where}); switch that folder to another branch first")
    return None


def delete_ref(session: Session, name: str, expected: Expected, head: str = HEAD) -> None:
    holders = sorted(session.execute(select(SqlRef.name).where(SqlRef.symbolic == name)).scalars())
    refused = checked_out_error(name, [h for h in holders if is_head_name(h)], head)
    if refused is not None:
        raise refused
    stmt = delete(SqlRef).where(SqlRef.name == name)
    if expected is not ANY:
        stmt = stmt.where(SqlRef.target == expected)
    if session.execute(stmt).rowcount != 1:
        if _ref_row(session, name) is None:
            raise UnknownRefError(f"no ref named {name}; see `romevc branch` and `romevc tag`")
        raise _conflict(session, name, expected)


# -- revision parsing ----------------------------------------------------------------------

def _base_commit(session: Session, base: str, refish: str, head_name: str) -> str:
    if base in (HEAD, "@"):
        head = read_head(session, head_name)
        if head.commit is None:
            raise UnknownRefError(f"HEAD has no commits yet (branch {head.branch!r} is unborn): nothing to show for {refish!r}")
        return head.commit
    if base.startswith("refs/"):
        target = session.execute(select(SqlRef.target).where(SqlRef.name == base)).scalar_one_or_none()
        if target is None:
            raise UnknownRefError(f"no ref named {base!r}; see `romevc branch` and `romevc tag`")
        return target
    names = [HEADS + base, TAGS + base, REMOTES + base]
    found = session.execute(select(SqlRef.name, SqlRef.target).where(SqlRef.name.in_(names))).all()
    found = [(n, t) for n, t in found if t is not None]
    if len(found) > 1:
        candidates = tuple(sorted(n for n, _ in found))
        raise AmbiguousRefError(f"{base!r} names several refs: {', '.join(candidates)}; spell the one you mean out", candidates)
    if found:
        return found[0][1]
    return resolve_prefix(session, SqlCommit.id, base, "commit", refish)


def resolve_prefix(session: Session, column, prefix: str, what: str, refish: str | None = None) -> str:
    """The one id in ``column`` starting with ``prefix`` (≥ 4 hex digits)."""
    refish = refish or prefix
    p = prefix.lower()
    if not (MIN_SHORT_ID <= len(p) <= 64 and all(c in "0123456789abcdef" for c in p)):
        raise UnknownRefError(
            f"unknown {what} {refish!r}: not a branch, tag or id (short ids need at least {MIN_SHORT_ID} hex digits)"
        )
    # A range scan uses the primary-key index on every backend (LIKE 'p%' does not on SQLite).
    ids = session.execute(
        select(column).where(column >= p, column < p + "g").order_by(column).limit(_ID_PREFIX_SCAN + 1)
    ).scalars().all()
    if not ids:
        raise UnknownRefError(f"unknown {what} {refish!r}: no branch, tag or id matches; see `romevc log`")
    if len(ids) > 1:
        shown = tuple(ids[:_ID_PREFIX_SCAN])
        more = " and more" if len(ids) > _ID_PREFIX_SCAN else ""
        raise AmbiguousRefError(
            f"{what} id prefix {prefix!r} is ambiguous: it matches {', '.join(i[:12] for i in shown)}{more}; "
            "type more digits", shown,
        )
    return ids[0]


def _nth_parent(session: Session, commit: str, n: int, refish: str) -> str:
    parent = session.execute(
        select(SqlCommitParent.parent_id).where(SqlCommitParent.commit_id == commit, SqlCommitParent.position == n - 1)
    ).scalar_one_or_none()
    if parent is None:
        which = "parent" if n == 1 else f"parent #{n}"
        raise UnknownRefError(f"{refish!r} goes past the root: commit {commit[:12]} has no {which}")
    return parent


def _nth_first_parent(session: Session, commit: str, n: int, refish: str) -> str:
    """``commit~n``: n first-parent steps in one recursive query, not one query per step."""
    if n <= 8:
        for _ in range(n):
            commit = _nth_parent(session, commit, 1, refish)
        return commit
    p = SqlCommitParent
    chain = select(literal(commit).label("id"), literal(0).label("depth")).cte("chain", recursive=True)
    chain = chain.union_all(
        select(p.parent_id, chain.c.depth + 1)
        .join(chain, (p.commit_id == chain.c.id) & (p.position == 0))
        .where(chain.c.depth < n))
    found, depth = session.execute(select(chain.c.id, chain.c.depth).order_by(chain.c.depth.desc()).limit(1)).one()
    if depth < n:
        raise UnknownRefError(f"{refish!r} goes past the root: commit {found[:12]} has no parent")
    return found


def resolve(session: Session, refish: str, head: str = HEAD) -> str:
    """A full commit id for ``refish``: HEAD (the row named ``head``), a branch, tag, full or
    short id, then ``~N``/``^N``.

    Names win over id prefixes, like git. A short name that is both a branch and a tag is
    an :class:`AmbiguousRefError` (git would pick the tag and warn). ``X~N`` follows first
    parents N times; ``X^N`` takes the N-th parent (``^`` = ``^1``, ``^0`` = X itself).
    """
    if not isinstance(refish, str) or not refish.strip():
        raise UnknownRefError(f"empty revision {refish!r}; pass a branch, tag or commit id")
    if not _is_unicode(refish):
        raise UnknownRefError(f"cannot parse revision {refish!r}: it is not valid Unicode text")
    refish = refish.strip()
    cut = min((i for i in (refish.find("~"), refish.find("^")) if i >= 0), default=len(refish))
    base, suffix = refish[:cut], refish[cut:]
    ops = _SUFFIX_OP.findall(suffix)
    if "".join(op + num for op, num in ops) != suffix or not base:
        raise UnknownRefError(f"cannot parse revision {refish!r}; write e.g. HEAD~2, main^2 or a1b2c3d")
    commit = _base_commit(session, base, refish, head)
    for op, num in ops:
        n = int(num) if num else 1
        if op == "^" and n > MAX_PARENT:
            raise UnknownRefError(f"{refish!r} asks for parent #{n}, which no commit has")
        if op == "~":
            commit = _nth_first_parent(session, commit, n, refish)
        elif n > 0:
            commit = _nth_parent(session, commit, n, refish)
    return commit
