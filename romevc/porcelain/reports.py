"""Plain values the ``Repo`` verbs return, each with ``to_dict()`` for ``--json``.

They hold ids and facts, never live rows or tensors, so a caller can keep them after
the repository is closed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from romevc.ledger import CommitRecord, EditRecord, VerifyReport

SHORT = 7  # characters of a short id, as git prints them


def short(commit_or_edit_id: str | None) -> str:
    return (commit_or_edit_id or "")[:SHORT]


def layer_range(layers) -> str:
    """"3-5" for consecutive layers, "3,5,7" otherwise, "4" for one."""
    layers = sorted(layers)
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def commit_dict(c: CommitRecord) -> dict[str, Any]:
    return {"id": c.id, "short": short(c.id), "parents": list(c.parents), "message": c.message,
            "author": c.author, "time": c.time, "tz": c.tz, "kind": c.kind, "edits": len(c.edit_ids)}


@dataclass(frozen=True)
class EditSummary:
    """One edit as a fact: what it asks, where it writes, and how large ΔW is."""

    id: str
    subject: str
    prompt: str  # with {} for the subject
    target_new: str
    target_true: str | None
    layer: int
    module: str
    method: str
    norm: float  # ‖ΔW‖_F
    author: str
    time: int
    stale: bool | None = None  # computed on other weights than it lands on (None: not asked)
    layers: tuple[int, ...] = ()  # a MEMIT request's layers (its pieces collapsed); () for one edit
    batch: dict[str, Any] | None = None  # a MEMIT piece's {"id", "index", "size"}; None otherwise
    pieces: tuple[str, ...] = ()  # the ids of a collapsed MEMIT request's pieces, layer by layer

    @classmethod
    def of(cls, record: EditRecord, stale: bool | None = None) -> "EditSummary":
        r = record.request
        return cls(id=record.id, subject=r.get("subject", ""), prompt=r.get("prompt", "{}"),
                   target_new=r.get("target_new", ""), target_true=r.get("target_true"), layer=record.layer,
                   module=record.module, method=record.method, norm=record.norm, author=record.author,
                   time=record.time, stale=stale, batch=_batch(record))

    @classmethod
    def of_pieces(cls, pieces, stale: bool | None = None) -> "EditSummary":
        """One MEMIT request from its pieces (one per layer): first piece's id, ‖ΔW‖ over all layers."""
        first = min(pieces, key=lambda r: r.layer)
        norm = sum(r.norm ** 2 for r in pieces) ** 0.5  # Frobenius norm of all its layers' updates together
        return dataclasses.replace(cls.of(first, stale), norm=norm, layers=tuple(sorted(r.layer for r in pieces)),
                                   pieces=tuple(r.id for r in sorted(pieces, key=lambda r: r.layer)))

    @property
    def layer_text(self) -> str:
        return layer_range(self.layers) if self.layers else str(self.layer)

    @property
    def text(self) -> str:
        return self.prompt.replace("{}", self.subject, 1)

    @property
    def fact(self) -> str:
        """'Tomas Varek lives in the city of → Rome'."""
        return f"{self.text} → {self.target_new}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "short": short(self.id), "fact": self.fact, "subject": self.subject,
                "prompt": self.prompt, "target_new": self.target_new, "target_true": self.target_true,
                "layer": self.layer, "module": self.module, "method": self.method, "norm": self.norm,
                "author": self.author, "time": self.time, "stale": self.stale, "layers": self.layer_text,
                "batch": self.batch, "pieces": list(self.pieces)}


def _batch(record: EditRecord) -> dict[str, Any] | None:
    info = record.hparams.get("batch") if isinstance(record.hparams, dict) else None
    return dict(info) if isinstance(info, dict) else None


def collapse(records, stale=None) -> tuple[EditSummary, ...]:
    """Summaries with a MEMIT request's pieces (same batch and index) as one fact, where its first piece sits."""
    stale = list(stale) if stale is not None else [None] * len(records)
    groups: dict[tuple, list] = {}
    order: list[tuple] = []
    for r, s in zip(records, stale):
        info = _batch(r)
        key = ("batch", info.get("id"), info.get("index")) if info else ("edit", r.id)
        if key not in groups:
            order.append(key)
            groups[key] = []
        groups[key].append((r, s))
    out = []
    for key in order:
        group = groups[key]
        flags = [s for _, s in group]
        flag = None if all(f is None for f in flags) else any(bool(f) for f in flags)
        out.append(EditSummary.of(group[0][0], flag) if key[0] == "edit"
                   else EditSummary.of_pieces([r for r, _ in group], flag))
    return tuple(out)


@dataclass(frozen=True)
class Prediction:
    """The model's top next token after a prompt, and the probability of a target."""

    token: str
    probability: float
    p_target: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"token": self.token, "probability": self.probability, "p_target": self.p_target}


@dataclass(frozen=True)
class EditEffect:
    """An edit a commit added or removed, with predictions on its own prompt before and after."""

    edit: EditSummary
    change: str  # "added" or "removed"
    before: Prediction
    after: Prediction

    def to_dict(self) -> dict[str, Any]:
        return {"edit": self.edit.to_dict(), "change": self.change,
                "before": self.before.to_dict(), "after": self.after.to_dict()}


@dataclass(frozen=True)
class Committed:
    """What a committing verb made: the new commit and the edits it introduced."""

    commit: CommitRecord
    edits: tuple[EditSummary, ...] = ()
    branch: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"commit": commit_dict(self.commit), "branch": self.branch, "edits": [e.to_dict() for e in self.edits]}


@dataclass(frozen=True)
class ShowReport:
    commit: CommitRecord
    added: tuple[EditSummary, ...]
    removed: tuple[EditSummary, ...]
    effects: tuple[EditEffect, ...] = ()  # empty when predictions were not asked for

    def to_dict(self) -> dict[str, Any]:
        return {"commit": commit_dict(self.commit), "added": [e.to_dict() for e in self.added],
                "removed": [e.to_dict() for e in self.removed], "effects": [e.to_dict() for e in self.effects]}


@dataclass(frozen=True)
class Status:
    branch: str | None  # None when detached
    head: str | None  # None when the branch is unborn
    edits: int
    stale: tuple[EditSummary, ...]
    base_id: str
    revision: str | None
    base_fingerprint: str
    architecture: str
    dtype: str
    ledger: str

    def to_dict(self) -> dict[str, Any]:
        return {"branch": self.branch, "head": self.head, "detached": self.branch is None, "edits": self.edits,
                "stale": [e.to_dict() for e in self.stale], "base": self.base_id, "revision": self.revision,
                "base_fingerprint": self.base_fingerprint, "architecture": self.architecture, "dtype": self.dtype,
                "ledger": self.ledger}


@dataclass(frozen=True)
class ProbeResult:
    """A probe prompt's top prediction at the two commits of a diff."""

    prompt: str
    before: Prediction
    after: Prediction

    @property
    def changed(self) -> bool:
        return self.before.token != self.after.token

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "before": self.before.to_dict(), "after": self.after.to_dict(),
                "changed": self.changed}


@dataclass(frozen=True)
class DiffReport:
    a: str
    b: str
    added: tuple[EditSummary, ...]
    removed: tuple[EditSummary, ...]
    probes: tuple[ProbeResult, ...] | None = None  # None: no probe file given

    def layers(self) -> list[str]:
        """The layer groups touched, in order: "4" for one edit, "3-5" for a MEMIT request's layers."""
        groups = {e.layer_text: e.layers or (e.layer,) for e in self.added + self.removed}
        return sorted(groups, key=groups.__getitem__)

    def to_dict(self) -> dict[str, Any]:
        by_layer = {group: {"added": [e.fact for e in self.added if e.layer_text == group],
                            "removed": [e.fact for e in self.removed if e.layer_text == group]}
                    for group in self.layers()}
        return {"a": self.a, "b": self.b, "added": [e.to_dict() for e in self.added],
                "removed": [e.to_dict() for e in self.removed], "by_layer": by_layer,
                "probes": None if self.probes is None else [p.to_dict() for p in self.probes]}


@dataclass(frozen=True)
class Conflict:
    """Two edits, one per side of a merge, that cannot both be added as they are.

    ``kind`` is "fact" (same subject and relation, different targets) or "key" (same
    module, update directions u = C⁻¹k nearly parallel: |cos| ≥ the threshold).
    """

    kind: str
    ours: EditSummary
    theirs: EditSummary
    cosine: float | None = None

    def describe(self) -> str:
        why = "same fact" if self.kind == "fact" else f"parallel keys in layer {self.ours.layer}, cos {self.cosine:.2f}"
        return (f"{self.ours.fact} (ours {short(self.ours.id)}) vs {self.theirs.fact} "
                f"(theirs {short(self.theirs.id)}): {why}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ours": self.ours.to_dict(), "theirs": self.theirs.to_dict(), "cosine": self.cosine}


@dataclass(frozen=True)
class MergeResult:
    kind: str  # "up-to-date", "fast-forward" or "merge"
    commit: str | None  # the branch tip afterwards
    added: tuple[EditSummary, ...] = ()  # their edits that landed
    dropped: tuple[EditSummary, ...] = ()  # edits left out by --ours/--theirs or as duplicates
    conflicts: tuple[Conflict, ...] = ()  # the conflicts that --ours/--theirs resolved
    stale: tuple[EditSummary, ...] = ()  # edits of the result computed on other weights
    recomputed: tuple[tuple[str, str], ...] = ()  # (old edit id, new edit id)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "commit": self.commit, "added": [e.to_dict() for e in self.added],
                "dropped": [e.to_dict() for e in self.dropped], "conflicts": [c.to_dict() for c in self.conflicts],
                "stale": [e.to_dict() for e in self.stale],
                "recomputed": [{"old": o, "new": n} for o, n in self.recomputed]}


@dataclass(frozen=True)
class BranchInfo:
    name: str
    commit: str
    current: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "commit": self.commit, "current": self.current}


@dataclass(frozen=True)
class BlameLine:
    commit: CommitRecord
    added: tuple[EditSummary, ...]
    removed: tuple[EditSummary, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"commit": commit_dict(self.commit), "added": [e.to_dict() for e in self.added],
                "removed": [e.to_dict() for e in self.removed]}


@dataclass(frozen=True)
class RecomputeCheck:
    """One edit recomputed from its request on the weights it was computed against."""

    edit: str
    status: str  # "identical", "differs" or "skipped"
    detail: str = ""
    max_abs_diff: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"edit": self.edit, "status": self.status, "detail": self.detail, "max_abs_diff": self.max_abs_diff}


@dataclass(frozen=True)
class VerifyResult:
    report: VerifyReport
    recomputed: tuple[RecomputeCheck, ...] = field(default=())

    @property
    def problems(self) -> tuple[str, ...]:
        extra = tuple(f"edit {c.edit} recomputes differently: {c.detail}" for c in self.recomputed
                      if c.status == "differs")
        return self.report.problems + extra

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "edits": self.report.edits, "commits": self.report.commits, "refs": self.report.refs,
                "problems": list(self.problems), "recomputed": [c.to_dict() for c in self.recomputed]}
