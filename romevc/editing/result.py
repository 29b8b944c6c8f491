"""An edit's full record: the delta and everything needed to compute it again."""
from __future__ import annotations

from dataclasses import dataclass, field

from romevc.editing.delta import Delta
from romevc.editing.request import EditRequest


@dataclass(frozen=True, eq=False)
class EditResult:
    """A computed ROME edit. Recomputing from these fields on the same weights gives the same delta."""

    request: EditRequest
    method: str  # "rome" or "r-rome"
    hparams: dict  # the RomeHyperParams as JSON-able values
    seed: int
    templates: tuple[str, ...]  # context prefixes, each with "{}" for the prompt
    layer: int
    delta: Delta  # module, layout, u (d_in,), v (d_out,)
    stats_id: str  # the second-moment statistics used (see editing.stats)
    weights_fingerprint: str  # the weights this edit was computed against
    seconds: float = 0.0
    losses: tuple[float, ...] = field(default=())  # value-optimisation loss per step

    @property
    def module(self) -> str:
        return self.delta.module

    @property
    def layout(self) -> str:
        return self.delta.layout


@dataclass(frozen=True, eq=False)
class MemitResult:
    """A computed MEMIT batch. Recomputing from these fields on the same weights gives the same deltas.

    ``deltas[j]`` is the rank-n update of ``layers[j]``; row i of its u and v belongs to
    ``requests[i]``, so the batch splits exactly into per-request pieces (``request_deltas``),
    though the pieces were computed together: dropping one does not give the batch without it.
    """

    requests: tuple[EditRequest, ...]
    method: str  # "memit"
    hparams: dict  # the MemitHyperParams as JSON-able values, layers resolved
    seed: int
    templates: tuple[str, ...]  # context prefixes, each with "{}" for the prompt
    layers: tuple[int, ...]  # ascending; each was computed on the weights carrying the ones before
    deltas: tuple[Delta, ...]  # one per layer: u (n, d_in), v (n, d_out)
    stats_ids: tuple[str, ...]  # the second-moment statistics of each layer
    weights_fingerprint: str  # the weights this batch was computed against
    seconds: float = 0.0
    losses: tuple[tuple[float, ...], ...] = field(default=())  # per request: its δ's loss per step

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(d.module for d in self.deltas)

    def request_deltas(self, i: int) -> tuple[Delta, ...]:
        """Request i's rank-one share of every layer's update (Σ over i gives each layer's delta)."""
        return tuple(Delta(d.module, d.layout, d.u[i].clone(), d.v[i].clone()) for d in self.deltas)
