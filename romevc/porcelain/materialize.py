"""From ledger records to weights: deltas, weight fingerprints, staleness, and the model cache.

A commit's weights are the pristine base plus the sum of its edit set's deltas, formed
in float32 from the ordered list (:func:`romevc.editing.delta.apply`). The same edit set therefore
gives bit-identical weights whatever path led there, which makes revert exact.

Every edit records the fingerprint of the weights it was computed against:
``sha256(base fingerprint ‖ digest(d₁) ‖ … ‖ digest(dₙ))`` over the deltas applied at the
time (:func:`romevc.editing.delta.weights_fingerprint`). :func:`fingerprints_before`
recomputes the same hash from the stored bytes, without a model, so whether an edit is
**stale** (computed on weights other than the ones it now lands on) is a cheap,
derived fact of each (edit, position in an edit set) — never stored, never out of date.

A MEMIT batch is stored as one rank-one piece per (request, layer), all computed together
on the weights before the batch. Its pieces share ``hparams["batch"]["id"]``, and every
piece is compared with the fingerprint before the batch's first piece, not before itself.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Callable, Sequence

import torch

from romevc.editing.delta import Delta, float32_bytes, row_views, tensor_from_float32_bytes
from romevc.editing.result import EditResult, MemitResult
from romevc.ledger import EditRecord, RepoInfo, StoredDelta
from romevc.ledger.objects import canonical_json
from romevc.porcelain.errors import BaseMismatchError

log = logging.getLogger(__name__)

# -- records <-> deltas ----------------------------------------------------------------------

def _shapes(record: EditRecord | StoredDelta) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Tensor shapes of u and v as the engine makes them: 1-D for rank one, else (k, d)."""
    if record.rank == 1:
        return (record.d_in,), (record.d_out,)
    return (record.rank, record.d_in), (record.rank, record.d_out)


def to_delta(record: EditRecord | StoredDelta) -> Delta:
    """The engine's :class:`Delta` for a stored edit (float32, CPU)."""
    u_shape, v_shape = _shapes(record)
    return Delta(record.module, record.layout, tensor_from_float32_bytes(record.u, u_shape),
                 tensor_from_float32_bytes(record.v, v_shape))


def to_deltas(records: Sequence[EditRecord | StoredDelta]) -> list[Delta]:
    """:func:`to_delta` of each record, decoding all blobs of one module and shape in one pass.

    A 1,000-edit checkout then makes two tensors per module instead of 2,000; each delta's
    u and v are rows of them (:func:`~romevc.editing.delta.row_views`; read-only use, like
    every delta), which the apply step takes as they are instead of stacking them again.
    """
    groups: dict[tuple, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault((record.module, *_shapes(record)), []).append(i)
    out: list[Delta | None] = [None] * len(records)
    for (_module, u_shape, v_shape), members in groups.items():
        us = tensor_from_float32_bytes(bytearray().join([records[i].u for i in members]), (len(members), *u_shape))
        vs = tensor_from_float32_bytes(bytearray().join([records[i].v for i in members]), (len(members), *v_shape))
        for i, u, v in zip(members, row_views(us), row_views(vs)):
            out[i] = Delta(records[i].module, records[i].layout, u, v)
    return out


def record_from_result(result: EditResult, *, author: str, time: int) -> EditRecord:
    """An :class:`EditRecord` holding everything needed to recompute ``result``."""
    delta = result.delta
    return EditRecord.create(
        request=result.request.to_dict(), method=result.method, hparams=result.hparams, seed=result.seed,
        templates=result.templates, layer=result.layer, module=delta.module, layout=delta.layout,
        u=float32_bytes(delta.u), v=float32_bytes(delta.v), rank=delta.rank, stats_id=result.stats_id,
        weights_fingerprint=result.weights_fingerprint, author=author, time=time,
    )


BATCH = "batch"  # the hparams key of a MEMIT piece: {"id", "index", "size"}


def batch_id(record: EditRecord) -> str | None:
    """The batch a MEMIT piece belongs to (None for an edit computed alone)."""
    info = record.hparams.get(BATCH) if isinstance(record.hparams, dict) else None
    return info.get("id") if isinstance(info, dict) else None


def memit_batch_id(result: MemitResult) -> str:
    """sha256 over what makes a batch: its requests, hyperparameters, templates and weights."""
    content = {"requests": [r.to_dict() for r in result.requests], "hparams": result.hparams,
               "templates": list(result.templates), "weights_fingerprint": result.weights_fingerprint}
    return hashlib.sha256(canonical_json(content).encode("utf-8")).hexdigest()


def records_from_memit(result: MemitResult, *, author: str, time: int) -> list[EditRecord]:
    """One rank-one record per (request, layer), request-major.

    Each module's pieces then stack, in order, into exactly the batch's u and v, so
    materialising them gives the bits ``Editor.apply([result])`` gives.
    """
    bid = memit_batch_id(result)
    n = len(result.requests)
    out = []
    for i, request in enumerate(result.requests):
        hparams = {**result.hparams, BATCH: {"id": bid, "index": i, "size": n}}
        for layer, stats_id, delta in zip(result.layers, result.stats_ids, result.request_deltas(i)):
            out.append(EditRecord.create(
                request=request.to_dict(), method=result.method, hparams=hparams, seed=result.seed,
                templates=result.templates, layer=layer, module=delta.module, layout=delta.layout,
                u=float32_bytes(delta.u), v=float32_bytes(delta.v), rank=1, stats_id=stats_id,
                weights_fingerprint=result.weights_fingerprint, author=author, time=time,
            ))
    return out


def delta_digest(record: EditRecord) -> str:
    """:meth:`Delta.digest` of ``to_delta(record)``, from the stored bytes (no torch)."""
    u_shape, v_shape = _shapes(record)
    h = hashlib.sha256(f"{record.module}\0{record.layout}\0{u_shape}\0{v_shape}\0".encode())
    h.update(record.u)  # float32 little-endian: the bytes Delta.digest hashes on this machine
    h.update(record.v)
    return h.hexdigest()


def fingerprints_before(base_fingerprint: str, records: Sequence[EditRecord]) -> list[str]:
    """For each position i, the fingerprint of base + records[:i] (what edit i should have seen);
    for a MEMIT piece, that of the weights before its batch's first piece in ``records``."""
    out: list[str] = []
    first: dict[str, str] = {}  # batch id -> fingerprint before its first piece
    h = hashlib.sha256(base_fingerprint.encode())
    for i, record in enumerate(records):
        here = base_fingerprint if i == 0 else h.hexdigest()
        bid = batch_id(record)
        out.append(first.setdefault(bid, here) if bid is not None else here)
        h.update(delta_digest(record).encode())
    return out


def weights_fingerprint_of(base_fingerprint: str, records: Sequence[EditRecord]) -> str:
    """The fingerprint of base + all ``records``: what an edit computed on top would record."""
    if not records:
        return base_fingerprint
    h = hashlib.sha256(base_fingerprint.encode())
    for record in records:
        h.update(delta_digest(record).encode())
    return h.hexdigest()


def stale_flags(base_fingerprint: str, records: Sequence[EditRecord]) -> list[bool]:
    """Whether each edit was computed on weights other than base + the edits before it.

    An edit without a recorded fingerprint is never called stale: nothing says it is.
    """
    before = fingerprints_before(base_fingerprint, records)
    return [r.weights_fingerprint is not None and r.weights_fingerprint != fp for r, fp in zip(records, before)]


# -- the model cache ----------------------------------------------------------------------------

class Workspace:
    """The base model of one repository, loaded once, and the edit set applied to it now.

    Switching commits re-applies deltas on pristine copies of the touched modules
    (:func:`romevc.editing.delta.apply`), so the base is read from disk once per process.
    """

    def __init__(self, info: RepoInfo, make_stats: Callable[[], object], *, loaded=None,
                 device_map: str | dict | None = None) -> None:
        self.info = info
        self._make_stats = make_stats
        self._device_map = device_map
        self._loaded = None
        self._editor = None
        self._deltas: dict[str, Delta] = {}
        if loaded is not None:
            self._check(loaded)
            self._loaded = loaded

    def _check(self, loaded) -> None:
        if loaded.fingerprint != self.info.base_fingerprint:
            raise BaseMismatchError(
                f"the base {self.info.base_id} now has weights {loaded.fingerprint[:12]}, but this repository's "
                f"edits were made on {self.info.base_fingerprint[:12]}; restore the original base files "
                "(or start a new repository with `romevc init`)"
            )

    @property
    def loaded(self):
        """The base as a :class:`romevc.model.LoadedModel`, loaded and fingerprint-checked on first use."""
        if self._loaded is None:
            from romevc.model import BaseSpec, load_base

            log.info("loading base %s", self.info.base_id)
            loaded = load_base(BaseSpec(self.info.base_id, self.info.revision), dtype=self.info.dtype,
                               device_map=self._device_map)
            self._check(loaded)
            self._loaded = loaded
        return self._loaded

    @property
    def ready(self) -> bool:
        """Whether the base is loaded and an editor made (nothing is loaded by asking)."""
        return self._editor is not None

    @property
    def editor(self):
        if self._editor is None:
            from romevc.editor import Editor

            self._editor = Editor(self.loaded, stats=self._make_stats())
        return self._editor

    def delta(self, record: EditRecord | StoredDelta) -> Delta:
        if record.id not in self._deltas:
            self._deltas[record.id] = to_delta(record)
        return self._deltas[record.id]

    def checkout(self, records: Sequence[EditRecord | StoredDelta]) -> torch.nn.Module:
        """Set the model's weights to base + ``records`` (exact); returns the model."""
        new = {r.id: r for r in records if r.id not in self._deltas}
        self._deltas.update(zip(new, to_deltas(list(new.values()))))
        wanted = [self._deltas[r.id] for r in records]
        editor = self.editor
        applied = editor.applied()
        # The applied deltas live on the model object: compare them by identity, so a model
        # shared between repositories (tests, notebooks) is never trusted blindly.
        if len(applied) != len(wanted) or any(a is not b for a, b in zip(applied, wanted)):
            try:
                editor.apply(wanted)
            except ValueError as exc:  # nothing was changed: apply checks every module before writing
                raise BaseMismatchError(f"cannot apply this edit set to {self.info.base_id}: {exc}") from None
        return editor.model

    def compute(self, request, hparams, *, templates: Sequence[str] | None = None) -> EditResult:
        """One edit on the weights checked out now; stored ``templates`` make a recompute exact."""
        from romevc.editing.rome import compute_edit

        editor = self.editor
        if templates is None:
            return editor.compute(request, hparams)
        return compute_edit(editor.model, editor.tokenizer, request, hparams, stats=editor.stats,
                            templates=tuple(templates))

    def compute_memit(self, requests, hparams, *, templates: Sequence[str] | None = None) -> MemitResult:
        """One MEMIT batch on the weights checked out now; stored ``templates`` make a recompute exact."""
        from romevc.editing.memit import compute_memit

        editor = self.editor
        if templates is None:
            return editor.compute_memit(requests, hparams)
        return compute_memit(editor.model, editor.tokenizer, requests, hparams, stats=editor.stats,
                             templates=tuple(templates))

    def compute_alphaedit(self, requests, hparams, *, preserve: Sequence = (),
                          templates: Sequence[str] | None = None) -> MemitResult:
        """One AlphaEdit batch on the weights checked out now, leaving the keys of the ``preserve``
        requests (the edits those weights carry) alone; stored ``templates`` make a recompute exact."""
        from romevc.editing.alphaedit import compute_alphaedit

        editor = self.editor
        result, _keys = compute_alphaedit(editor.model, editor.tokenizer, requests, hparams, stats=editor.stats,
                                          preserve=preserve, templates=tuple(templates) if templates else None)
        return result
