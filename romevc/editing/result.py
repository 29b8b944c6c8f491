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
