"""Errors of the porcelain verbs: what a user can get wrong with a repository.

All subclass :class:`RepoError` (a :class:`romevc.errors.RomevcError`), so the CLI prints
them on one line and exits 1. ``NotARepositoryError`` is the ledger's, re-exported.
"""
from __future__ import annotations

from typing import Sequence

from romevc.errors import ModelLoadError, RomevcError
from romevc.ledger.errors import NotARepositoryError

__all__ = [
    "BaseMismatchError", "DetachedHeadError", "EditSetError", "ExportError", "MergeConflictError",
    "NotARepositoryError", "NothingToDoError", "RecomputeError", "RepoError", "RepositoryExistsError",
]


class RepoError(RomevcError):
    """Root of the porcelain's errors."""


class RepositoryExistsError(RepoError):
    """``init`` in a folder that already holds ``.romevc``."""


class DetachedHeadError(RepoError):
    """A verb that commits, run with HEAD detached (romevc refuses; see ``Repo.edit``)."""


class BaseMismatchError(ModelLoadError):
    """The base checkpoint on disk no longer has the fingerprint the repository recorded."""


class NothingToDoError(RepoError):
    """A revert, merge or rebase that would not change anything."""


class EditSetError(RepoError):
    """A batch or edit-set file that cannot be read (the message names the line)."""


class RecomputeError(RepoError):
    """An edit that cannot be recomputed here (unknown method, statistics gone)."""


class ExportError(RepoError):
    """An export target that cannot be written."""


class MergeConflictError(RepoError):
    """Both sides edited the same fact, or keys too close to add independently.

    ``conflicts`` holds :class:`romevc.porcelain.reports.Conflict` values for the API.
    """

    def __init__(self, message: str, conflicts: Sequence[object] = ()) -> None:
        super().__init__(message)
        self.conflicts = tuple(conflicts)
