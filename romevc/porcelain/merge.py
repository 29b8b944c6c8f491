"""Three-way merge of edit sets, conflicts, and recomputing stale edits.

An edit set is an ordered list of rank-one deltas, so a merge is set arithmetic plus one
question git never has to ask: can two deltas computed independently simply be added?

- **Same fact** (same subject and relation prompt, different targets): no — the sum
  writes neither target. Refused unless the user picks a side.
- **Parallel keys** in the same module: ROME's update direction is u = C⁻¹k / (kᵀC⁻¹k),
  so ΔW fires on keys along C⁻¹k. Two updates whose directions are nearly parallel both
  fire on each other's key and their values add up — e.g. two relations of one subject
  share the subject's last-token key exactly. |cos(u₁, u₂)| ≥ ``threshold`` is a conflict.
- The same fact with the same target on both sides is a duplicate: ours is kept.

Everything else merges. An edit that lands on weights other than the ones it was
computed on is **stale** (see :mod:`romevc.porcelain.materialize`); it still works
approximately, and :func:`recompute_stale` recomputes it exactly where it now sits.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Collection, Sequence

import numpy as np

from romevc.ledger import EditRecord
from romevc.porcelain.errors import MergeConflictError, RecomputeError
from romevc.porcelain.materialize import batch_id, delta_digest
from romevc.porcelain.reports import Conflict, EditSummary

DEFAULT_THRESHOLD = 0.9  # |cos| of update directions above which two edits interfere
OURS, THEIRS = "ours", "theirs"


def _norm(text: object) -> str:
    return " ".join(str(text or "").casefold().split())


def same_fact(a: EditRecord, b: EditRecord) -> bool:
    """Same subject and same relation prompt (case and spacing ignored)."""
    return (_norm(a.request.get("subject")) == _norm(b.request.get("subject"))
            and _norm(a.request.get("prompt")) == _norm(b.request.get("prompt")))


def _unit_rows(record: EditRecord) -> np.ndarray:
    u = np.frombuffer(record.u, dtype="<f4").astype(np.float64).reshape(record.rank, record.d_in)  # (k, d_in)
    return u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-30)


def key_cosine(a: EditRecord, b: EditRecord) -> float | None:
    """max |cos| between the update directions (rows of u) of two edits of one module."""
    if a.module != b.module or a.d_in != b.d_in:
        return None
    return float(np.abs(_unit_rows(a) @ _unit_rows(b).T).max())


def find_conflicts(ours: Sequence[EditRecord], theirs: Sequence[EditRecord],
                   threshold: float = DEFAULT_THRESHOLD) -> tuple[list[Conflict], list[EditRecord]]:
    """Conflicts between two sides' new edits, and their edits that duplicate ours."""
    conflicts: list[Conflict] = []
    duplicates: list[EditRecord] = []
    for t in theirs:
        for o in ours:
            if same_fact(o, t):
                if _norm(o.request.get("target_new")) == _norm(t.request.get("target_new")):
                    duplicates.append(t)
                    break
                conflicts.append(Conflict("fact", EditSummary.of(o), EditSummary.of(t)))
                continue
            cos = key_cosine(o, t)
            if cos is not None and cos >= threshold:
                conflicts.append(Conflict("key", EditSummary.of(o), EditSummary.of(t), cos))
    return conflicts, duplicates


def conflict_message(conflicts: Sequence[Conflict], what: str = "merge") -> str:
    listed = "; ".join(c.describe() for c in conflicts)
    return (f"{what} conflict: {len(conflicts)} pair(s) of edits cannot be combined: {listed}; "
            "nothing was written — keep one side with --ours or --theirs")


@dataclass(frozen=True)
class MergePlan:
    result: tuple[EditRecord, ...]  # the merged edit set, in order
    added: tuple[EditRecord, ...]  # their edits that land
    dropped: tuple[EditRecord, ...]  # left out: duplicates and the losing side of conflicts
    conflicts: tuple[Conflict, ...]


def plan_merge(base: Sequence[EditRecord], ours: Sequence[EditRecord], theirs: Sequence[EditRecord], *,
               resolve: str | None = None, threshold: float = DEFAULT_THRESHOLD) -> MergePlan:
    """The three-way merge of edit sets: ours in order, minus what theirs removed since the
    base, then theirs' new edits in their order. Raises :class:`MergeConflictError`
    when sides conflict and ``resolve`` (``"ours"``/``"theirs"``) does not pick one.
    """
    if resolve not in (None, OURS, THEIRS):
        raise ValueError(f"`resolve` must be None, 'ours' or 'theirs', got {resolve!r}")
    base_ids = {e.id for e in base}
    ours_ids = {e.id for e in ours}
    theirs_ids = {e.id for e in theirs}
    removed_by_theirs = base_ids - theirs_ids
    ours_new = [e for e in ours if e.id not in base_ids]
    theirs_new = [e for e in theirs if e.id not in base_ids and e.id not in ours_ids]
    conflicts, duplicates = find_conflicts(ours_new, theirs_new, threshold)
    if conflicts and resolve is None:
        raise MergeConflictError(conflict_message(conflicts), conflicts)
    drop = {e.id for e in duplicates}
    if resolve == OURS:
        drop |= {c.theirs.id for c in conflicts}
    elif resolve == THEIRS:
        drop |= {c.ours.id for c in conflicts}
    kept_ours = [e for e in ours if e.id not in removed_by_theirs and e.id not in drop]
    added = [e for e in theirs_new if e.id not in drop]
    dropped = [e for e in list(ours) + theirs_new if e.id in drop]
    return MergePlan(tuple(kept_ours + added), tuple(added), tuple(dropped), tuple(conflicts))


def recompute_stale(
    base_fingerprint: str, records: Sequence[EditRecord],
    recompute: Callable[[EditRecord, Sequence[EditRecord]], EditRecord],
    only: Collection[str] | None = None,
    recompute_batch: Callable[[Sequence[EditRecord], Sequence[EditRecord]], list[EditRecord]] | None = None,
) -> tuple[list[EditRecord], list[tuple[str, str]]]:
    """Walk ``records`` in order and replace each stale edit (optionally only ids in
    ``only``) by ``recompute(edit, edits before it)``, which must compute it on exactly
    those weights. Returns the new list and the (old id, new id) pairs.

    A stale MEMIT piece is recomputed with its whole batch: ``recompute_batch(pieces, edits
    before the first piece)`` returns the new pieces in the order given, and each replaces
    its old piece where that sits.
    """
    out: list[EditRecord] = []
    pairs: list[tuple[str, str]] = []
    first: dict[str, str] = {}  # batch id -> fingerprint before its first piece
    redone: dict[str, EditRecord] = {}  # old piece id -> its recomputed piece
    h = hashlib.sha256(base_fingerprint.encode())
    for record in records:
        here = base_fingerprint if not out else h.hexdigest()
        bid = batch_id(record)
        if record.id in redone:
            new = redone.pop(record.id)
            pairs.append((record.id, new.id))
            record = new
        else:
            expected = first.setdefault(bid, here) if bid is not None else here
            stale = record.weights_fingerprint is not None and record.weights_fingerprint != expected
            pieces = [r for r in records if batch_id(r) == bid] if stale and bid is not None else [record]
            if stale and (only is None or any(p.id in only for p in pieces)):
                if bid is None:
                    new = recompute(record, list(out))
                else:
                    if recompute_batch is None:
                        raise RecomputeError(f"edit {record.id[:7]} is a piece of a MEMIT batch, which is "
                                             "recomputed only as a whole batch")
                    redone.update((old.id, again) for old, again in zip(pieces, recompute_batch(pieces, list(out))))
                    new = redone.pop(record.id)
                pairs.append((record.id, new.id))
                record = new
        out.append(record)
        h.update(delta_digest(record).encode())
    return out, pairs
