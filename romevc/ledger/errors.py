"""Errors of the ledger: what a user (or a concurrent writer) can cause at the storage layer.

Every class subclasses :class:`LedgerError`, itself a :class:`romevc.errors.RomevcError`, so
the CLI prints the message on one line and exits 1. Messages say what happened and what
to do. Programming mistakes (a malformed id passed by the porcelain, a wrong type) stay
``ValueError``/``TypeError``.
"""
from __future__ import annotations

from romevc.errors import RomevcError


class LedgerError(RomevcError):
    """Root of the ledger's errors."""


class NotARepositoryError(LedgerError):
    """A path or URL that holds no romevc ledger."""


class LedgerExistsError(LedgerError):
    """``Ledger.create`` on a location that already holds a ledger."""


class LedgerVersionError(LedgerError):
    """A ledger whose schema or object format is newer than this romevc understands."""


class UnknownObjectError(LedgerError):
    """An edit, commit or statistics id that this ledger does not contain."""


class UnknownRefError(LedgerError):
    """A branch, tag, HEAD or commit-ish that does not resolve to a commit of this ledger."""


class AmbiguousRefError(LedgerError):
    """A short id or name that matches more than one object; ``candidates`` lists them."""

    def __init__(self, message: str, candidates: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.candidates = candidates


class RefFormatError(LedgerError):
    """A ref name git would refuse (spaces, ``..``, ``~^:?*[\\``, a trailing ``.lock``...)."""


class RefConflictError(LedgerError):
    """A compare-and-swap on a ref failed: someone moved it first (a non-fast-forward)."""


class CorruptObjectError(LedgerError):
    """A stored edit or commit whose content no longer hashes to its id."""


class UnknownRemoteError(LedgerError):
    """A remote name that is not configured."""


class RemoteExistsError(LedgerError):
    """``add_remote`` with a name that is already configured."""


class LedgerUnavailableError(LedgerError):
    """The ledger's database cannot be reached: a server down, a wrong URL or credentials."""


class UnstorableValueError(LedgerError, ValueError):
    """Text the ledger refuses on every backend because one of them cannot store it
    (a NUL character, or more characters than its column holds)."""
