"""The published edit set, format version 1: what a push uploads and a fetch trusts.

A folder (a Hub revision, a git commit, an ``export --format romevc``) holding:

- ``romevc.json``: the format name and version, the base checkpoint (id, pinned revision,
  fingerprint, architecture, dtype, module template and layout), ``head``/``branches``/
  ``tags`` → commit ids, every commit (parents, ordered edit ids, message, author, time,
  tz, kind) and every edit's metadata (all :class:`EditRecord` fields but the tensors),
  each under its sha256 content id;
- ``edits.safetensors``: ``<edit-id>.u`` (rank, d_in) and ``<edit-id>.v`` (rank, d_out),
  float32, with ``__metadata__`` naming the format and the base;
- ``README.md``: the model card (:mod:`romevc.remotes.card`); never read back.

Reading is the trust boundary. :func:`read_editset` refuses, before anything reaches a
ledger: a name with ``..`` or an absolute path, a symlink, any file but JSON, safetensors,
``README.md`` (and git's ``.gitattributes``), so never a pickle; malformed JSON; an unknown
format version; and any edit or commit whose content does not hash to its id. The ids are
the ledger's own (:func:`romevc.ledger.edit_id`), so a verified set is what its author stored.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from romevc import paths
from romevc.ledger import CommitRecord, EditRecord, Ledger, RepoInfo
from romevc.ledger.errors import CorruptObjectError
from romevc.ledger.objects import delta_norm, is_full_id
from romevc.remotes.errors import (
    EditSetHashError, EditSetVersionError, InvalidEditSetError, RemoteBaseMismatchError, UnsafeEditSetError,
)

FORMAT_NAME = "romevc-editset"
FORMAT_VERSION = 1
MANIFEST, TENSORS, CARD = "romevc.json", "edits.safetensors", "README.md"
PLUMBING = (".gitattributes",)  # written by the Hub and by git hosts; listed, never read
READ_SUFFIXES = (".json", ".safetensors")
# Suffixes of files that may hold a pickle (torch, numpy, joblib...): named in the refusal.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".joblib", ".safetensors.bin")
_DRIVE = re.compile(r"^[A-Za-z]:")


# -- values ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BaseRef:
    """The base checkpoint an edit set applies to; ``fingerprint`` is what must match."""

    id: str
    revision: str | None
    fingerprint: str
    architecture: str
    dtype: str
    module_template: str
    layout: str

    @classmethod
    def of(cls, info: RepoInfo) -> "BaseRef":
        return cls(info.base_id, info.revision, info.base_fingerprint, info.architecture, info.dtype,
                   info.module_template, info.layout)

    @property
    def spec(self) -> str:
        """``id@revision`` as :class:`romevc.model.BaseSpec` parses it."""
        return f"{self.id}@{self.revision}" if self.revision else self.id

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "revision": self.revision, "fingerprint": self.fingerprint,
                "architecture": self.architecture, "dtype": self.dtype,
                "module_template": self.module_template, "layout": self.layout}


@dataclass(frozen=True)
class Manifest:
    """``romevc.json`` without the records: the base and where the refs point."""

    base: BaseRef
    head: str | None  # the commit a clone or apply takes (the first ref written)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    romevc_version: str | None = None
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True)
class EditSet:
    """A verified edit set: the manifest, every edit, every commit (parents before children)."""

    manifest: Manifest
    edits: list[EditRecord]
    commits: list[CommitRecord]

    def edits_of(self, commit_id: str) -> list[EditRecord]:
        """The ordered active edit set of one of its commits."""
        by_id = {e.id: e for e in self.edits}
        commit = next(c for c in self.commits if c.id == commit_id)
        return [by_id[i] for i in commit.edit_ids]


# -- names ---------------------------------------------------------------------------------------------

def check_file_name(name: str) -> None:
    """Refuse a name that could escape the folder or a file romevc would never read."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafeEditSetError(f"the edit set lists an empty or binary file name {name!r}; nothing was imported")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise UnsafeEditSetError(f"the edit set holds a file with an absolute path, {name!r}; nothing was imported")
    parts = posix.split("/")
    if ".." in parts:
        raise UnsafeEditSetError(f"the edit set holds a file name with '..', {name!r}, which would write outside "
                                 "the folder; nothing was imported")
    if any(p in ("", ".") for p in parts):
        raise UnsafeEditSetError(f"the edit set holds an odd file name, {name!r}; nothing was imported")
    if posix == CARD or posix in PLUMBING or parts[-1].endswith(READ_SUFFIXES):
        return
    if parts[-1].lower().endswith(PICKLE_SUFFIXES):
        raise UnsafeEditSetError(f"the edit set holds {name!r}, which may be a pickle: romevc reads only JSON and "
                                 "safetensors, never pickle; nothing was imported")
    raise UnsafeEditSetError(f"the edit set holds {name!r}, which is not part of the format (only JSON, "
                             "safetensors and README.md); nothing was imported")


def check_file_names(names: Iterable[str]) -> None:
    for name in names:
        check_file_name(name)


def scan_folder(folder: Path) -> list[str]:
    """Relative POSIX names of every file under ``folder``, refusing symlinks and odd files."""
    names = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                raise UnsafeEditSetError(f"the edit set holds a symlink, {rel!r}: romevc follows no links; "
                                         "nothing was imported")
            if name in files:
                if not path.is_file():
                    raise UnsafeEditSetError(f"the edit set holds {rel!r}, which is not a regular file; "
                                             "nothing was imported")
                check_file_name(rel)
                names.append(rel)
    return names


# -- collecting from a ledger --------------------------------------------------------------------------

def _classify(ledger: Ledger, ref: str) -> tuple[str | None, str | None]:
    """("branch"|"tag"|None, short name) for a ref as the user wrote it (None: a commit-ish)."""
    if ref == "HEAD":
        branch = ledger.head().branch
        return ("branch", branch) if branch else (None, None)
    for prefix, kind in (("refs/heads/", "branch"), ("refs/tags/", "tag")):
        if ref.startswith(prefix) and ledger.get_ref(ref):
            return kind, ref[len(prefix):]
    for prefix, kind in (("refs/heads/", "branch"), ("refs/tags/", "tag")):
        if not ref.startswith("refs/") and ledger.get_ref(prefix + ref):
            return kind, ref
    return None, None


def _topological(commits: dict[str, CommitRecord]) -> list[CommitRecord]:
    """Parents before children, deterministic (oldest first among ready commits)."""
    order: list[CommitRecord] = []
    done: set[str] = set()
    for start in sorted(commits, key=lambda c: (commits[c].time, c)):
        stack = [(start, False)]
        while stack:
            cid, expanded = stack.pop()
            if cid in done or cid not in commits:
                continue
            if expanded:
                done.add(cid)
                order.append(commits[cid])
                continue
            stack.append((cid, True))
            stack.extend((p, False) for p in reversed(commits[cid].parents) if p not in done)
    return order


def collect(ledger: Ledger, refs: Sequence[str]) -> EditSet:
    """The edit set of ``refs`` (branches, tags, commit-ishes): their whole history, every edit
    it uses, and the local tags that point into it (like ``git push --follow-tags``)."""
    from romevc import __version__

    if not refs:
        raise ValueError("`refs` must name at least one branch, tag or commit")
    branches, tags, tips = {}, {}, []
    for ref in refs:
        commit = ledger.resolve(ref)
        kind, name = _classify(ledger, ref)
        if kind == "branch":
            branches[name] = commit
        elif kind == "tag":
            tags[name] = commit
        tips.append(commit)
    commits: dict[str, CommitRecord] = {}
    for tip in tips:
        for c in ledger.log(tip):
            commits.setdefault(c.id, c)
    for ref in ledger.list_refs("refs/tags/"):
        if ref.target in commits:
            tags.setdefault(ref.short_name, ref.target)
    ordered = _topological(commits)
    edits: dict[str, EditRecord] = {}
    for c in ordered:
        for edit_id in c.edit_ids:
            if edit_id not in edits:
                edits[edit_id] = ledger.get_edit(edit_id)  # verified
    manifest = Manifest(BaseRef.of(ledger.repo_info()), tips[0], branches, tags, __version__)
    return EditSet(manifest, list(edits.values()), ordered)


# -- writing ---------------------------------------------------------------------------------------------

def _edit_json(e: EditRecord) -> dict[str, Any]:
    return {"id": e.id, "request": e.request, "method": e.method, "hparams": e.hparams, "seed": e.seed,
            "templates": list(e.templates), "layer": e.layer, "module": e.module, "layout": e.layout,
            "rank": e.rank, "d_in": e.d_in, "d_out": e.d_out, "norm": e.norm, "stats_id": e.stats_id,
            "weights_fingerprint": e.weights_fingerprint, "author": e.author, "time": e.time, "notes": e.notes}


def _commit_json(c: CommitRecord) -> dict[str, Any]:
    return {"id": c.id, "parents": list(c.parents), "edits": list(c.edit_ids), "message": c.message,
            "author": c.author, "time": c.time, "tz": c.tz, "kind": c.kind}


def manifest_bytes(editset: EditSet) -> bytes:
    m = editset.manifest
    data = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "romevc_version": m.romevc_version,
            "base": m.base.to_dict(), "head": m.head, "branches": m.branches, "tags": m.tags,
            "commits": [_commit_json(c) for c in editset.commits], "edits": [_edit_json(e) for e in editset.edits]}
    return (json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def tensors_bytes(editset: EditSet) -> bytes:
    from safetensors.numpy import save

    tensors = {}
    for e in editset.edits:
        tensors[f"{e.id}.u"] = np.frombuffer(e.u, dtype="<f4").reshape(e.rank, e.d_in)  # (k, d_in)
        tensors[f"{e.id}.v"] = np.frombuffer(e.v, dtype="<f4").reshape(e.rank, e.d_out)  # (k, d_out)
    base = editset.manifest.base
    return save(tensors, metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
                                   "base": base.id, "base_revision": base.revision or "",
                                   "base_fingerprint": base.fingerprint})


def write_files(editset: EditSet, folder: Path, *, card: bool = True) -> list[str]:
    """Write the edit set's files into an existing folder; returns their names."""
    from romevc.remotes.card import editset_card

    files = {MANIFEST: manifest_bytes(editset), TENSORS: tensors_bytes(editset)}
    if card:
        files[CARD] = editset_card(editset).encode("utf-8")
    for name, data in files.items():
        paths.atomic_write_bytes(folder / name, data)
    return sorted(files)


def write_editset(repo, refs: Sequence[str], folder: str | Path, *, force: bool = False) -> Path:
    """Write the edit set of ``refs`` of ``repo`` (a :class:`Repo` or a :class:`Ledger`) to ``folder``.

    The folder is built under a temporary name beside the target and renamed into place.
    """
    from romevc.porcelain.export import check_target

    ledger = getattr(repo, "ledger", repo)
    out = check_target(folder, force=force)
    editset = collect(ledger, list(refs))
    with paths.staging_dir(out) as staging:
        write_files(editset, staging)
    return out


# -- reading -----------------------------------------------------------------------------------------------

def _bad(what: str) -> InvalidEditSetError:
    return InvalidEditSetError(f"{MANIFEST}: {what}; the edit set is malformed, nothing was imported")


def _get(d: Any, key: str, types: type | tuple, where: str, *, optional: bool = False) -> Any:
    if not isinstance(d, dict):
        raise _bad(f"{where} must be an object")
    if key not in d or (optional and d[key] is None):
        if optional:
            return None
        raise _bad(f"{where} lacks `{key}`")
    value = d[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _bad(f"`{where}.{key}` must be {getattr(types, '__name__', types)}, got a boolean")
    if not isinstance(value, types):
        raise _bad(f"`{where}.{key}` has the wrong type ({type(value).__name__})")
    return value


def _id_map(d: Any, where: str) -> dict[str, str]:
    if not isinstance(d, dict) or not all(isinstance(k, str) and is_full_id(v) for k, v in d.items()):
        raise _bad(f"`{where}` must map names to full commit ids")
    return dict(d)


def parse_manifest(data: bytes) -> tuple[Manifest, dict[str, Any]]:
    """The manifest of ``romevc.json`` bytes (and the raw object), refusing unknown versions."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidEditSetError(f"{MANIFEST} is not valid JSON ({exc}); nothing was imported") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise InvalidEditSetError(f"{MANIFEST} is not a romevc edit set (no \"format\": \"{FORMAT_NAME}\"); "
                                  "nothing was imported")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version != FORMAT_VERSION:
        raise EditSetVersionError(f"this edit set uses format version {version!r}, but this romevc reads only version "
                                  f"{FORMAT_VERSION}; upgrade romevc (pip install -U romevc) and try again")
    b = _get(raw, "base", dict, "romevc.json")
    base = BaseRef(_get(b, "id", str, "base"), _get(b, "revision", str, "base", optional=True),
                   _get(b, "fingerprint", str, "base"), _get(b, "architecture", str, "base"),
                   _get(b, "dtype", str, "base"), _get(b, "module_template", str, "base"),
                   _get(b, "layout", str, "base"))
    head = raw.get("head")
    if head is not None and not is_full_id(head):
        raise _bad("`head` must be a full commit id")
    manifest = Manifest(base, head, _id_map(raw.get("branches", {}), "branches"), _id_map(raw.get("tags", {}), "tags"),
                        raw.get("romevc_version") if isinstance(raw.get("romevc_version"), str) else None, version)
    return manifest, raw


def _read_tensors(path: Path, expected: set[str], base: BaseRef) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
            if keys != expected:
                extra, missing = sorted(keys - expected), sorted(expected - keys)
                raise InvalidEditSetError(f"{TENSORS} does not match {MANIFEST}: missing {missing[:2]}, unexpected "
                                          f"{extra[:2]}; nothing was imported")
            arrays = {k: f.get_tensor(k) for k in sorted(keys)}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise InvalidEditSetError(f"{TENSORS} cannot be read as safetensors ({exc}); nothing was imported") from None
    if meta.get("format") != FORMAT_NAME or meta.get("base_fingerprint") != base.fingerprint:
        raise InvalidEditSetError(f"{TENSORS} does not belong to this {MANIFEST} (its metadata names another format "
                                  "or base); nothing was imported")
    return arrays


def _edit(m: Any, arrays: dict[str, np.ndarray], i: int) -> EditRecord:
    where = f"edits[{i}]"
    eid = _get(m, "id", str, where)
    rank, d_in, d_out = (_get(m, k, int, where) for k in ("rank", "d_in", "d_out"))
    blobs = []
    for part, d in (("u", d_in), ("v", d_out)):
        a = arrays[f"{eid}.{part}"]
        if a.dtype != np.float32 or a.shape != (rank, d):
            raise InvalidEditSetError(f"{TENSORS}: {eid[:12]}.{part} is {a.dtype}{list(a.shape)}, expected float32"
                                      f"[{rank}, {d}]; nothing was imported")
        blobs.append(np.ascontiguousarray(a, dtype="<f4").tobytes())
    u, v = blobs
    try:
        record = EditRecord(
            id=eid, request=_get(m, "request", dict, where), method=_get(m, "method", str, where),
            hparams=_get(m, "hparams", dict, where), seed=_get(m, "seed", int, where),
            templates=tuple(_get(m, "templates", list, where)), layer=_get(m, "layer", int, where),
            module=_get(m, "module", str, where), layout=_get(m, "layout", str, where), rank=rank, d_in=d_in,
            d_out=d_out, u=u, v=v, norm=delta_norm(u, v, rank),  # recomputed: never trust an unhashed number
            stats_id=_get(m, "stats_id", str, where, optional=True),
            weights_fingerprint=_get(m, "weights_fingerprint", str, where, optional=True),
            author=_get(m, "author", str, where), time=_get(m, "time", int, where),
            notes=_get(m, "notes", dict, where, optional=True) or {},
        )
    except ValueError as exc:
        raise _bad(f"{where}: {exc}") from None
    if not all(isinstance(t, str) for t in record.templates):
        raise _bad(f"`{where}.templates` must be strings")
    try:
        record.verify()
    except CorruptObjectError:
        raise EditSetHashError(f"edit {eid[:12]} does not hash to its id: the edit set was altered after it was "
                               "published (in transit or by the host); nothing was imported") from None
    return record


def _commit(m: Any, i: int) -> CommitRecord:
    where = f"commits[{i}]"
    try:
        record = CommitRecord(
            id=_get(m, "id", str, where), parents=tuple(_get(m, "parents", list, where)),
            edit_ids=tuple(_get(m, "edits", list, where)), message=_get(m, "message", str, where),
            author=_get(m, "author", str, where), time=_get(m, "time", int, where), tz=_get(m, "tz", int, where),
            kind=_get(m, "kind", str, where),
        )
    except ValueError as exc:
        raise _bad(f"{where}: {exc}") from None
    try:
        record.verify()
    except CorruptObjectError:
        raise EditSetHashError(f"commit {record.id[:12]} does not hash to its id: the edit set was altered after it "
                               "was published (in transit or by the host); nothing was imported") from None
    return record


def _check_closed(manifest: Manifest, edits: list[EditRecord], commits: list[CommitRecord]) -> None:
    edit_ids, commit_ids = {e.id for e in edits}, {c.id for c in commits}
    if len(edit_ids) != len(edits) or len(commit_ids) != len(commits):
        raise _bad("an edit or commit is listed twice")
    for c in commits:
        missing = [i for i in c.edit_ids if i not in edit_ids] or [p for p in c.parents if p not in commit_ids]
        if missing:
            raise _bad(f"commit {c.id[:12]} refers to {missing[0][:12]}, which the edit set does not hold")
    refs = {**{f"branch {k}": v for k, v in manifest.branches.items()}, **{f"tag {k}": v for k, v in manifest.tags.items()}}
    if manifest.head:
        refs["head"] = manifest.head
    for name, target in refs.items():
        if target not in commit_ids:
            raise _bad(f"{name} points at {target[:12]}, which the edit set does not hold")
    base = manifest.base
    for e in edits:
        if e.module != base.module_template.format(e.layer) or e.layout != base.layout:
            raise _bad(f"edit {e.id[:12]} writes {e.module} ({e.layout}), which the base {base.id} "
                       f"({base.module_template}, {base.layout}) does not have")


def read_manifest(folder: str | Path) -> Manifest:
    """Only the manifest of a folder (name checks and version included; no hashes)."""
    folder = Path(folder)
    scan_folder(folder)
    if not (folder / MANIFEST).is_file():
        raise InvalidEditSetError(f"{folder} holds no {MANIFEST}: not a romevc edit set")
    return parse_manifest((folder / MANIFEST).read_bytes())[0]


def read_editset(folder: str | Path) -> EditSet:
    """Read and verify the edit set in ``folder`` (see the module docstring for what is refused)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidEditSetError(f"{folder} is not a folder; give the folder of an edit set")
    names = scan_folder(folder)
    for needed in (MANIFEST, TENSORS):
        if needed not in names:
            raise InvalidEditSetError(f"{folder} holds no {needed}: not a romevc edit set (a full checkpoint or "
                                      "a PEFT adapter is published differently)")
    manifest, raw = parse_manifest((folder / MANIFEST).read_bytes())
    edit_meta, commit_meta = _get(raw, "edits", list, "romevc.json"), _get(raw, "commits", list, "romevc.json")
    ids = [_get(m, "id", str, f"edits[{i}]") for i, m in enumerate(edit_meta)]
    if not all(is_full_id(i) for i in ids):
        raise _bad("every edit id must be 64 hex digits")
    arrays = _read_tensors(folder / TENSORS, {f"{i}.{p}" for i in ids for p in "uv"}, manifest.base)
    edits = [_edit(m, arrays, i) for i, m in enumerate(edit_meta)]
    commits = [_commit(m, i) for i, m in enumerate(commit_meta)]
    _check_closed(manifest, edits, commits)
    return EditSet(manifest, edits, commits)


def check_base(base: BaseRef, info: RepoInfo) -> None:
    """Refuse an edit set made on another base than ``info``'s."""
    if base.fingerprint != info.base_fingerprint:
        raise RemoteBaseMismatchError(
            f"this edit set was made on {base.spec} (weights {base.fingerprint[:12]}), but this repository's base "
            f"is {info.base_id} (weights {info.base_fingerprint[:12]}); clone it into a new repository with "
            "`romevc clone` instead"
        )
