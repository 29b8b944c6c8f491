"""The ledger: romevc's storage of edits, commits and refs in one SQL database.

``Ledger`` is the entry point; records are frozen dataclasses; errors subclass
``romevc.errors.RomevcError``. No torch here: tensors are float32 little-endian bytes.
"""
from romevc.ledger.errors import (
    AmbiguousRefError, CorruptObjectError, LedgerError, LedgerExistsError, LedgerVersionError,
    NotARepositoryError, RefConflictError, RefFormatError, RemoteExistsError, UnknownObjectError,
    UnknownRefError, UnknownRemoteError,
)
from romevc.ledger.objects import (
    FORMAT_VERSION, KIND_EDIT, KIND_MERGE, KIND_REVERT, LAYOUT_CONV1D, LAYOUT_LINEAR, BlameEntry, CommitRecord,
    EditRecord, Head, RefRecord, RemoteRecord, RepoInfo, StatsMeta, StoredDelta, VerifyReport, commit_id, edit_id,
)
from romevc.ledger.refs import ANY, Expected, branch_ref, check_ref_name, tag_ref
from romevc.ledger.store import Ledger, default_url

__all__ = [
    "ANY", "FORMAT_VERSION", "KIND_EDIT", "KIND_MERGE", "KIND_REVERT", "LAYOUT_CONV1D", "LAYOUT_LINEAR",
    "AmbiguousRefError", "BlameEntry", "CommitRecord", "CorruptObjectError", "EditRecord", "Expected", "Head", "Ledger",
    "LedgerError", "LedgerExistsError", "LedgerVersionError", "NotARepositoryError", "RefConflictError",
    "RefFormatError", "RefRecord", "RemoteExistsError", "RemoteRecord", "RepoInfo", "StatsMeta", "StoredDelta",
    "UnknownObjectError", "UnknownRefError", "UnknownRemoteError", "VerifyReport", "branch_ref",
    "check_ref_name", "commit_id", "default_url", "edit_id", "tag_ref",
]
