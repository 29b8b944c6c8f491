"""Errors of publishing and fetching edit sets: what a remote, a file or a user can get wrong.

Every class subclasses :class:`RemoteError` (a :class:`romevc.errors.RomevcError`), so the
CLI prints the message on one line and exits 1. The edit-set errors also subclass the
porcelain's :class:`EditSetError`, so code that catches "a bad edit set" catches these.
Each is raised before anything touches the ledger.
"""
from __future__ import annotations

from romevc.errors import RomevcError
from romevc.porcelain.errors import EditSetError


class RemoteError(RomevcError):
    """Root of the remotes' errors."""


class InvalidEditSetError(RemoteError, EditSetError):
    """A published edit set that cannot be read: a missing file, malformed JSON, wrong shapes."""


class UnsafeEditSetError(InvalidEditSetError):
    """A file name with ``..`` or an absolute path, a symlink, or a file romevc never reads (a pickle)."""


class EditSetVersionError(InvalidEditSetError):
    """An edit set written in a format version this romevc does not know."""


class EditSetHashError(InvalidEditSetError):
    """An edit or commit whose content does not hash to its id: altered in transit or by the host."""


class RemoteBaseMismatchError(RemoteError):
    """An edit set made on another base checkpoint (its fingerprint differs from this repository's)."""


class RemoteMovedError(RemoteError):
    """A push onto a remote branch that moved since it was last seen: fetch and merge first."""


class RemoteAccessError(RemoteError):
    """A remote that cannot be reached, read or written (network, permissions, a bad URL)."""


class RemoteRefError(RemoteError):
    """A branch the remote does not have, or one that holds no edit set."""
