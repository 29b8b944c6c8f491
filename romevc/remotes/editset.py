"""Edit sets to and from folders: collected from a ledger, written, read back and verified.

The format itself (file names, ``romevc.json``'s fields, what is refused) is described in
:mod:`romevc.remotes.manifest`; its names are re-exported here. :func:`read_editset` is the
trust boundary: it recomputes every edit's and commit's content id before returning, so a
verified set is exactly what its author stored.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from romevc import paths
from romevc.errors import SafetensorsFormatError
from romevc.ledger import CommitRecord, EditRecord, Ledger
from romevc.ledger.errors import CorruptObjectError
from romevc.ledger.objects import delta_norm, is_full_id
from romevc.remotes.errors import EditSetHashError, InvalidEditSetError
from romevc.remotes.manifest import (  # noqa: F401 - re-exported: the format's names live here too
    CARD, FORMAT_NAME, FORMAT_VERSION, MANIFEST, PICKLE_SUFFIXES, PLUMBING, READ_SUFFIXES, TENSORS, BaseRef,
    EditSet, Manifest, base_shapes, check_base, check_file_name, check_file_names, check_fits, get_field, malformed,
    parse_manifest, scan_folder,
)

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


def write_files(editset: EditSet, folder: Path, *, card: bool = True, url: str | None = None) -> list[str]:
    """Write the edit set's files into an existing folder; returns their names (``url``: for the card)."""
    from romevc.remotes.card import editset_card

    files = {MANIFEST: manifest_bytes(editset), TENSORS: tensors_bytes(editset)}
    if card:
        files[CARD] = editset_card(editset, url).encode("utf-8")
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


# -- reading ---------------------------------------------------------------------------------------------

def _read_tensors(path: Path, expected: set[str], base: BaseRef) -> dict[str, np.ndarray]:
    """The tensors of ``edits.safetensors``, its header checked before anything is read
    (:mod:`romevc.safe_tensors`: a truncated file, lying offsets, a memory bomb or a renamed pickle)."""
    from romevc.safe_tensors import load, read_header

    try:
        header = read_header(path)
        keys = set(header.tensors)
        if keys != expected:
            extra, missing = sorted(keys - expected), sorted(expected - keys)
            raise InvalidEditSetError(f"{TENSORS} does not match {MANIFEST}: missing {missing[:2]}, unexpected "
                                      f"{extra[:2]}; nothing was imported")
        odd = sorted(t.name for t in header.tensors.values() if t.dtype != "F32")
        if odd:
            raise InvalidEditSetError(f"{TENSORS}: {odd[0][:12]}... is {header.tensors[odd[0]].dtype}, expected "
                                      "float32; nothing was imported")
        meta = header.metadata
        if meta.get("format") != FORMAT_NAME or meta.get("base_fingerprint") != base.fingerprint:
            raise InvalidEditSetError(f"{TENSORS} does not belong to this {MANIFEST} (its metadata names another "
                                      "format or base); nothing was imported")
        return load(path, "numpy")[1]
    except SafetensorsFormatError as exc:
        raise InvalidEditSetError(f"{TENSORS}: {exc}; nothing was imported") from None


def _edit(m: Any, arrays: dict[str, np.ndarray], i: int) -> EditRecord:
    where = f"edits[{i}]"
    eid = get_field(m, "id", str, where)
    rank, d_in, d_out = (get_field(m, k, int, where) for k in ("rank", "d_in", "d_out"))
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
            id=eid, request=get_field(m, "request", dict, where), method=get_field(m, "method", str, where),
            hparams=get_field(m, "hparams", dict, where), seed=get_field(m, "seed", int, where),
            templates=tuple(get_field(m, "templates", list, where)), layer=get_field(m, "layer", int, where),
            module=get_field(m, "module", str, where), layout=get_field(m, "layout", str, where), rank=rank, d_in=d_in,
            d_out=d_out, u=u, v=v, norm=delta_norm(u, v, rank),  # recomputed: never trust an unhashed number
            stats_id=get_field(m, "stats_id", str, where, optional=True),
            weights_fingerprint=get_field(m, "weights_fingerprint", str, where, optional=True),
            author=get_field(m, "author", str, where), time=get_field(m, "time", int, where),
            notes=get_field(m, "notes", dict, where, optional=True) or {},
        )
    except ValueError as exc:
        raise malformed(f"{where}: {exc}") from None
    if not all(isinstance(t, str) for t in record.templates):
        raise malformed(f"`{where}.templates` must be strings")
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
            id=get_field(m, "id", str, where), parents=tuple(get_field(m, "parents", list, where)),
            edit_ids=tuple(get_field(m, "edits", list, where)), message=get_field(m, "message", str, where),
            author=get_field(m, "author", str, where), time=get_field(m, "time", int, where),
            tz=get_field(m, "tz", int, where),
            kind=get_field(m, "kind", str, where),
        )
    except ValueError as exc:
        raise malformed(f"{where}: {exc}") from None
    try:
        record.verify()
    except CorruptObjectError:
        raise EditSetHashError(f"commit {record.id[:12]} does not hash to its id: the edit set was altered after it "
                               "was published (in transit or by the host); nothing was imported") from None
    return record


def _check_closed(manifest: Manifest, edits: list[EditRecord], commits: list[CommitRecord]) -> None:
    edit_ids, commit_ids = {e.id for e in edits}, {c.id for c in commits}
    if len(edit_ids) != len(edits) or len(commit_ids) != len(commits):
        raise malformed("an edit or commit is listed twice")
    for c in commits:
        missing = [i for i in c.edit_ids if i not in edit_ids] or [p for p in c.parents if p not in commit_ids]
        if missing:
            raise malformed(f"commit {c.id[:12]} refers to {missing[0][:12]}, which the edit set does not hold")
    refs = {f"branch {k}": v for k, v in manifest.branches.items()}
    refs.update({f"tag {k}": v for k, v in manifest.tags.items()})
    if manifest.head:
        refs["head"] = manifest.head
    for name, target in refs.items():
        if target not in commit_ids:
            raise malformed(f"{name} points at {target[:12]}, which the edit set does not hold")
    base = manifest.base
    for e in edits:
        if e.module != base.module_template.format(e.layer) or e.layout != base.layout:
            raise malformed(f"edit {e.id[:12]} writes {e.module} ({e.layout}), which the base {base.id} "
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
    edit_meta = get_field(raw, "edits", list, MANIFEST)
    commit_meta = get_field(raw, "commits", list, MANIFEST)
    ids = [get_field(m, "id", str, f"edits[{i}]") for i, m in enumerate(edit_meta)]
    if not all(is_full_id(i) for i in ids):
        raise malformed("every edit id must be 64 hex digits")
    arrays = _read_tensors(folder / TENSORS, {f"{i}.{p}" for i in ids for p in "uv"}, manifest.base)
    edits = [_edit(m, arrays, i) for i, m in enumerate(edit_meta)]
    commits = [_commit(m, i) for i, m in enumerate(commit_meta)]
    _check_closed(manifest, edits, commits)
    return EditSet(manifest, edits, commits)


