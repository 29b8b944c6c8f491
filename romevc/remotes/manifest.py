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
from typing import Any, Iterable, Mapping

from romevc.errors import ModelLoadError
from romevc.ledger import CommitRecord, EditRecord, RepoInfo
from romevc.ledger.objects import LAYOUT_CONV1D, is_full_id
from romevc.remotes.errors import (
    EditSetVersionError, InvalidEditSetError, RemoteBaseMismatchError, UnsafeEditSetError,
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


# -- the manifest -----------------------------------------------------------------------------------------------

def malformed(what: str) -> InvalidEditSetError:
    return InvalidEditSetError(f"{MANIFEST}: {what}; the edit set is malformed, nothing was imported")


def get_field(d: Any, key: str, types: type | tuple, where: str, *, optional: bool = False) -> Any:
    if not isinstance(d, dict):
        raise malformed(f"{where} must be an object")
    if key not in d or (optional and d[key] is None):
        if optional:
            return None
        raise malformed(f"{where} lacks `{key}`")
    value = d[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise malformed(f"`{where}.{key}` must be {getattr(types, '__name__', types)}, got a boolean")
    if not isinstance(value, types):
        raise malformed(f"`{where}.{key}` has the wrong type ({type(value).__name__})")
    return value


def _id_map(d: Any, where: str) -> dict[str, str]:
    if not isinstance(d, dict) or not all(isinstance(k, str) and is_full_id(v) for k, v in d.items()):
        raise malformed(f"`{where}` must map names to full commit ids")
    return dict(d)


def parse_manifest(data: bytes) -> tuple[Manifest, dict[str, Any]]:
    """The manifest of ``romevc.json`` bytes (and the raw object), refusing unknown versions."""
    try:
        raw = json.loads(data.decode("utf-8"))
        json.dumps(raw, ensure_ascii=False).encode("utf-8")  # a "\ud800" escape decodes, but hashes to nothing
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise InvalidEditSetError(f"{MANIFEST} is not valid JSON ({str(exc)[:160]}); nothing was imported") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise InvalidEditSetError(f"{MANIFEST} is not a romevc edit set (no \"format\": \"{FORMAT_NAME}\"); "
                                  "nothing was imported")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version != FORMAT_VERSION:
        raise EditSetVersionError(f"this edit set uses format version {version!r}, but this romevc reads only version "
                                  f"{FORMAT_VERSION}; upgrade romevc (pip install -U romevc) and try again")
    b = get_field(raw, "base", dict, "romevc.json")
    base = BaseRef(get_field(b, "id", str, "base"), get_field(b, "revision", str, "base", optional=True),
                   get_field(b, "fingerprint", str, "base"), get_field(b, "architecture", str, "base"),
                   get_field(b, "dtype", str, "base"), get_field(b, "module_template", str, "base"),
                   get_field(b, "layout", str, "base"))
    head = raw.get("head")
    if head is not None and not is_full_id(head):
        raise malformed("`head` must be a full commit id")
    manifest = Manifest(base, head, _id_map(raw.get("branches", {}), "branches"), _id_map(raw.get("tags", {}), "tags"),
                        raw.get("romevc_version") if isinstance(raw.get("romevc_version"), str) else None, version)
    return manifest, raw


def check_base(base: BaseRef, info: RepoInfo) -> None:
    """Refuse an edit set made on another base than ``info``'s: other weights, or (a forged
    fingerprint) another architecture, edited module or weight layout."""
    if base.fingerprint != info.base_fingerprint:
        raise RemoteBaseMismatchError(
            f"this edit set was made on {base.spec} (weights {base.fingerprint[:12]}), but this repository's base "
            f"is {info.base_id} (weights {info.base_fingerprint[:12]}); clone it into a new repository with "
            "`romevc clone` instead"
        )
    ours = (info.architecture, info.module_template, info.layout)
    theirs = (base.architecture, base.module_template, base.layout)
    if theirs != ours:
        raise RemoteBaseMismatchError(
            f"this edit set claims this repository's base weights but was made for {'/'.join(theirs)!r}, not "
            f"{'/'.join(ours)!r}: it does not fit this model; nothing was imported"
        )


def _weight_shape(shapes: Mapping[str, tuple[int, ...]], module: str) -> tuple[int, ...] | None:
    """The shape of ``module``'s weight; checkpoints may drop leading parts of the name
    (GPT-2's own files say ``h.1.mlp.c_proj.weight`` for ``transformer.h.1.mlp.c_proj``)."""
    parts = f"{module}.weight".split(".")
    for start in range(len(parts) - 1):
        shape = shapes.get(".".join(parts[start:]))
        if shape is not None:
            return tuple(shape)
    return None


def base_shapes(info: RepoInfo) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of the base's weights, from the headers of its files when they are on
    this machine (nothing is downloaded; empty when they are not here)."""
    from romevc.model import BaseSpec, cached_location, weight_shapes

    location = cached_location(BaseSpec(info.base_id, info.revision))
    try:
        return weight_shapes(location) if location is not None else {}
    except ModelLoadError:  # a broken base is refused when it is loaded; here there is nothing to compare
        return {}


def check_fits(edits: Iterable[EditRecord], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse edits whose (d_in, d_out) differ from the base's weight of their module (``shapes``:
    tensor name → shape): made for a model of another width, under a borrowed fingerprint.
    With no shapes known there is nothing to compare with."""
    if not shapes:
        return
    for e in edits:
        shape = _weight_shape(shapes, e.module)
        want = (e.d_in, e.d_out) if e.layout == LAYOUT_CONV1D else (e.d_out, e.d_in)
        if shape != want:
            has = "has no such weight" if shape is None else f"has a {list(shape)} weight there"
            raise RemoteBaseMismatchError(
                f"edit {e.id[:12]} changes {e.module} as a {list(want)} weight, but this repository's base {has}: "
                "it was made for another model; nothing was imported"
            )
