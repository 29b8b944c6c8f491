"""The ledger's values: frozen dataclasses that never hold a live database row.

Edits and commits are content-addressed like git (dulwich's ``ShaFile``): the id is the
sha256 of a typed, length-prefixed canonical serialization, equality compares ids, and
``verify()`` recomputes the id. The canonical serialization is JSON with sorted keys and
no whitespace, so the same values give the same bytes in every Python and database.

Everything JSON-valued (request, hparams, notes) is normalised through one JSON
round-trip on construction: a record built in memory and the same record read back from
the database compare field for field. Treat those dicts as read-only; a record whose
dict was mutated no longer verifies.

u and v are raw float32 little-endian bytes, ``rank * d_in`` and ``rank * d_out`` values
(row-major (rank, d_in) and (rank, d_out)), so ΔW = vᵀu in (out, in). The porcelain turns
them into tensors, e.g. ``torch.frombuffer(bytearray(r.u), dtype=torch.float32).view(r.u_shape)``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from romevc.ledger.errors import CorruptObjectError

FORMAT_VERSION = 1  # of the canonical serializations below; stored in the repo row

# The two weight layouts. They mirror ``romevc.architectures`` (which imports torch, so the
# ledger does not import it); tests check that the strings agree.
LAYOUT_LINEAR = "out_in"
LAYOUT_CONV1D = "in_out"
LAYOUTS = (LAYOUT_LINEAR, LAYOUT_CONV1D)

KIND_EDIT, KIND_REVERT, KIND_MERGE = "edit", "revert", "merge"  # the porcelain's commit kinds

_FULL_ID = re.compile(r"[0-9a-f]{64}")
_KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_FLOAT32 = np.dtype("<f4")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys, no whitespace, no NaN: the bytes every id is hashed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def normalise_json(value: Any, what: str) -> Any:
    """``value`` as it reads back from the database (tuples become lists, keys become str)."""
    try:
        text = canonical_json(value)
        text.encode("utf-8")  # lone surrogates cannot be hashed
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{what}` must be JSON-serialisable without NaN/inf: {exc}") from None


def is_full_id(value: object) -> bool:
    return isinstance(value, str) and _FULL_ID.fullmatch(value) is not None


def _typed_sha256(kind: str, header: Mapping[str, Any], *blobs: bytes) -> str:
    """sha256 of ``"<kind> <len>\\0" + canonical header + blobs`` (git's object framing)."""
    encoded = canonical_json(header).encode("utf-8")
    h = hashlib.sha256(f"{kind} {len(encoded)}\0".encode("ascii"))
    h.update(encoded)
    for blob in blobs:
        h.update(blob)
    return h.hexdigest()


def delta_norm(u: bytes, v: bytes, rank: int) -> float:
    """‖ΔW‖_F of ΔW = vᵀu without forming it: sqrt(Σ_ij (u_i·u_j)(v_i·v_j)), in float64."""
    uu = np.frombuffer(u, dtype=_FLOAT32).astype(np.float64).reshape(rank, -1)  # (k, d_in)
    vv = np.frombuffer(v, dtype=_FLOAT32).astype(np.float64).reshape(rank, -1)  # (k, d_out)
    return float(np.sqrt(max(0.0, float(((uu @ uu.T) * (vv @ vv.T)).sum()))))


def edit_id(
    *, request: Mapping[str, Any], method: str, hparams: Mapping[str, Any], seed: int,
    templates: Sequence[str], layer: int, module: str, layout: str,
    rank: int, d_in: int, d_out: int, u: bytes, v: bytes,
) -> str:
    """The content address of an edit: what it asks, how it was computed, and its tensors.

    Author, time, notes, stats id and weights fingerprint are metadata, not content: the
    same request computed to the same bytes is the same edit, whoever stored it first.
    """
    header = {
        "format": FORMAT_VERSION, "request": request, "method": method, "hparams": hparams,
        "seed": seed, "templates": list(templates), "layer": layer, "module": module,
        "layout": layout, "shape": {"rank": rank, "d_in": d_in, "d_out": d_out},
    }
    return _typed_sha256("romevc-edit", header, u, v)


@functools.lru_cache(maxsize=4096)
def _canonical_str(value: str) -> str:
    """canonical_json of a string; a checkout sees the same few module names 1,000 times."""
    return canonical_json(value)


def edit_id_from_stored(
    *, request_json: str, method: str, hparams_json: str, seed: int, templates_json: str, layer: int,
    module: str, layout: str, rank: int, d_in: int, d_out: int, u: bytes, v: bytes,
) -> str:
    """:func:`edit_id` from the canonical JSON text the ledger stores, without parsing it.

    Canonical JSON nests: the serialization of the header is the serialization of each
    value, spliced in sorted-key order. Checking out 1,000 edits then verifies every id
    by hashing ~8 MB instead of decoding and re-encoding 3,000 JSON documents.
    """
    name = _canonical_str
    text = (
        f'{{"format":{FORMAT_VERSION},"hparams":{hparams_json},"layer":{int(layer)},'
        f'"layout":{name(layout)},"method":{name(method)},"module":{name(module)},'
        f'"request":{request_json},"seed":{int(seed)},'
        f'"shape":{{"d_in":{int(d_in)},"d_out":{int(d_out)},"rank":{int(rank)}}},'
        f'"templates":{templates_json}}}'
    ).encode("utf-8")
    h = hashlib.sha256(f"romevc-edit {len(text)}\0".encode("ascii"))
    h.update(text)
    h.update(u)
    h.update(v)
    return h.hexdigest()


class StoredDelta(NamedTuple):
    """Just what materialising an edit needs: its id, module, layout, shapes and blobs.

    Read by :meth:`romevc.ledger.Ledger.deltas_of`, verified against the id like a full
    :class:`EditRecord` but without decoding its JSON. A named tuple: a checkout makes
    one per edit, and a tuple is made in a third of a frozen dataclass's time.
    """

    id: str
    module: str
    layout: str
    rank: int
    d_in: int
    d_out: int
    u: bytes
    v: bytes


def commit_id(
    *, parents: Sequence[str], edit_ids: Sequence[str], message: str, author: str,
    time: int, tz: int, kind: str,
) -> str:
    """The content address of a commit: its parents, its ordered edit set and its metadata."""
    header = {
        "format": FORMAT_VERSION, "parents": list(parents), "edits": list(edit_ids),
        "message": message, "author": author, "time": time, "tz": tz, "kind": kind,
    }
    return _typed_sha256("romevc-commit", header)


@dataclass(frozen=True)
class RepoInfo:
    """The single ``repo`` row: which base checkpoint every edit of this ledger applies to."""

    base_id: str  # Hub id or local folder of the base checkpoint
    architecture: str  # the architecture-table family (``config.model_type``), e.g. "llama"
    dtype: str  # the dtype weights are materialised in, e.g. "float32"
    base_fingerprint: str  # sha256 of the base weight files (romevc.model.fingerprint)
    module_template: str  # e.g. "model.layers.{}.mlp.down_proj"
    layout: str  # LAYOUT_LINEAR or LAYOUT_CONV1D: how that module stores its weight
    revision: str | None = None  # the pinned Hub commit, None for a local folder
    created: int = 0  # UTC seconds
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"`layout` must be one of {LAYOUTS}, got {self.layout!r}")


@dataclass(frozen=True, eq=False)
class EditRecord:
    """One stored edit: the delta ΔW = vᵀu of ``module`` and everything needed to recompute it.

    Build new records with :meth:`create`, which derives shapes, ‖ΔW‖ and the id.
    """

    id: str
    request: dict[str, Any]  # EditRequest.to_dict()
    method: str  # "rome", "r-rome", "memit"...
    hparams: dict[str, Any]
    seed: int
    templates: tuple[str, ...]
    layer: int
    module: str
    layout: str
    rank: int
    d_in: int
    d_out: int
    u: bytes  # float32 LE, (rank, d_in)
    v: bytes  # float32 LE, (rank, d_out)
    norm: float  # ‖ΔW‖_F
    stats_id: str | None
    weights_fingerprint: str | None
    author: str
    time: int  # UTC seconds
    notes: dict[str, Any] = field(default_factory=dict)  # mutable metadata, e.g. {"stale": true}

    def __post_init__(self) -> None:
        for name in ("request", "hparams", "notes"):
            object.__setattr__(self, name, normalise_json(getattr(self, name), name))
        object.__setattr__(self, "templates", tuple(self.templates))
        object.__setattr__(self, "u", bytes(self.u))
        object.__setattr__(self, "v", bytes(self.v))
        if self.layout not in LAYOUTS:
            raise ValueError(f"`layout` must be one of {LAYOUTS}, got {self.layout!r}")
        if self.rank < 1 or self.d_in < 1 or self.d_out < 1:
            raise ValueError(f"shapes must be positive, got rank={self.rank} d_in={self.d_in} d_out={self.d_out}")

    @classmethod
    def create(
        cls, *, request: Mapping[str, Any], method: str, hparams: Mapping[str, Any], seed: int,
        templates: Sequence[str], layer: int, module: str, layout: str, u: bytes, v: bytes,
        rank: int = 1, stats_id: str | None, weights_fingerprint: str | None, author: str,
        time: int, norm: float | None = None, notes: Mapping[str, Any] | None = None,
    ) -> "EditRecord":
        """A new record with d_in/d_out read off the blob lengths, ‖ΔW‖ and the id computed."""
        u, v = bytes(u), bytes(v)
        if rank < 1 or len(u) % (4 * rank) or len(v) % (4 * rank) or not u or not v:
            raise ValueError(
                f"`u` ({len(u)} bytes) and `v` ({len(v)} bytes) must each hold rank={rank} non-empty float32 rows"
            )
        d_in, d_out = len(u) // (4 * rank), len(v) // (4 * rank)
        if not (np.isfinite(np.frombuffer(u, dtype=_FLOAT32)).all() and np.isfinite(np.frombuffer(v, dtype=_FLOAT32)).all()):
            raise ValueError("`u` and `v` must be finite float32 values (no NaN or inf)")
        request = normalise_json(request, "request")
        hparams = normalise_json(hparams, "hparams")
        content = dict(request=request, method=method, hparams=hparams, seed=seed, templates=tuple(templates),
                       layer=layer, module=module, layout=layout, rank=rank, d_in=d_in, d_out=d_out, u=u, v=v)
        return cls(
            id=edit_id(**content), **content,
            norm=delta_norm(u, v, rank) if norm is None else float(norm),
            stats_id=stats_id, weights_fingerprint=weights_fingerprint, author=author, time=time,
            notes=dict(notes or {}),
        )

    @property
    def subject(self) -> str | None:
        return self.request.get("subject")

    @property
    def u_shape(self) -> tuple[int, int]:
        return (self.rank, self.d_in)

    @property
    def v_shape(self) -> tuple[int, int]:
        return (self.rank, self.d_out)

    def compute_id(self) -> str:
        return edit_id(
            request=self.request, method=self.method, hparams=self.hparams, seed=self.seed,
            templates=self.templates, layer=self.layer, module=self.module, layout=self.layout,
            rank=self.rank, d_in=self.d_in, d_out=self.d_out, u=self.u, v=self.v,
        )

    def verify(self) -> None:
        """Raise :class:`CorruptObjectError` unless the blobs fit the shapes and hash to ``id``."""
        if len(self.u) != 4 * self.rank * self.d_in or len(self.v) != 4 * self.rank * self.d_out:
            raise CorruptObjectError(
                f"edit {self.id}: u/v hold {len(self.u)}/{len(self.v)} bytes, expected "
                f"{4 * self.rank * self.d_in}/{4 * self.rank * self.d_out}; restore the ledger from a backup or re-pull it"
            )
        actual = self.compute_id()
        if actual != self.id:
            raise CorruptObjectError(
                f"edit {self.id} is corrupt: its content hashes to {actual}; restore the ledger from a backup or re-pull it"
            )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EditRecord) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"EditRecord(id={self.id[:12]}, subject={self.subject!r}, layer={self.layer}, rank={self.rank})"


@dataclass(frozen=True, eq=False)
class CommitRecord:
    """One commit: its parents (first parent = the branch it advanced) and its active edit set.

    ``edit_ids`` is the complete ordered snapshot, not a diff: materialising a commit needs
    no history walk. ``time`` is UTC seconds, ``tz`` the author's offset in seconds east
    of UTC (like dulwich's ``commit_timezone``).
    """

    id: str
    parents: tuple[str, ...]
    edit_ids: tuple[str, ...]
    message: str
    author: str
    time: int
    tz: int = 0
    kind: str = KIND_EDIT

    def __post_init__(self) -> None:
        object.__setattr__(self, "parents", tuple(self.parents))
        object.__setattr__(self, "edit_ids", tuple(self.edit_ids))
        for what, ids in (("parents", self.parents), ("edit_ids", self.edit_ids)):
            if len(set(ids)) != len(ids):
                raise ValueError(f"`{what}` lists an id twice: {list(ids)}")
            bad = [i for i in ids if not is_full_id(i)]
            if bad:
                raise ValueError(f"`{what}` must hold full 64-hex ids, got {bad[:3]}")
        if not _KIND.fullmatch(self.kind):
            raise ValueError(f"`kind` must be a short lowercase word like 'edit', got {self.kind!r}")

    @classmethod
    def create(
        cls, *, parents: Sequence[str], edit_ids: Sequence[str], message: str, author: str,
        time: int, tz: int = 0, kind: str = KIND_EDIT,
    ) -> "CommitRecord":
        """A new record with its id computed."""
        parents, edit_ids = tuple(parents), tuple(edit_ids)
        content = dict(parents=parents, edit_ids=edit_ids, message=message, author=author,
                       time=int(time), tz=int(tz), kind=kind)
        return cls(id=commit_id(**content), **content)

    def compute_id(self) -> str:
        return commit_id(parents=self.parents, edit_ids=self.edit_ids, message=self.message,
                         author=self.author, time=self.time, tz=self.tz, kind=self.kind)

    def verify(self) -> None:
        """Raise :class:`CorruptObjectError` unless the content hashes to ``id``."""
        actual = self.compute_id()
        if actual != self.id:
            raise CorruptObjectError(
                f"commit {self.id} is corrupt: its content hashes to {actual}; restore the ledger from a backup or re-pull it"
            )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CommitRecord) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"CommitRecord(id={self.id[:12]}, kind={self.kind!r}, message={self.message[:40]!r})"


@dataclass(frozen=True)
class RefRecord:
    """A ref: ``refs/heads/x``/``refs/tags/x`` → commit, or ``HEAD`` → commit or symbolic ref."""

    name: str
    target: str | None  # commit id; None for a symbolic HEAD
    symbolic: str | None = None  # e.g. "refs/heads/main" when HEAD is attached

    @property
    def short_name(self) -> str:
        for prefix in ("refs/heads/", "refs/tags/"):
            if self.name.startswith(prefix):
                return self.name[len(prefix):]
        return self.name


class Head(NamedTuple):
    """Where HEAD is: ``branch`` (short name) is None when detached; ``commit`` None when unborn."""

    branch: str | None
    commit: str | None


@dataclass(frozen=True)
class RemoteRecord:
    """A configured remote and the last commit seen on each of its branches."""

    name: str
    url: str
    seen: dict[str, str] = field(default_factory=dict)  # branch -> remote commit id


@dataclass(frozen=True)
class StatsMeta:
    """Where second-moment statistics live and what they were computed from (no tensors here)."""

    id: str
    model_fingerprint: str
    module: str
    corpus_id: str
    token_count: int
    dtype: str = "float32"
    location: str | None = None  # a file path or a blob reference
    created: int = 0


@dataclass(frozen=True)
class BlameEntry:
    """A commit that added or removed edits matching a blame query."""

    commit: CommitRecord
    added: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify_all`` checked and every problem it found (empty when all is well)."""

    edits: int
    commits: int
    refs: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems
