"""A loaded base model with the caches edits need: statistics and context templates.

The editing functions are pure and take their caches as arguments; this object owns
those caches for one model so that a session of many edits computes each only once.
"""
from __future__ import annotations

from typing import Sequence

from romevc.architectures import default_layer, num_layers
from romevc.editing import delta as deltas
from romevc.editing.alphaedit import AlphaEditHyperParams, PreservedKeys, compute_alphaedit
from romevc.editing.delta import Delta
from romevc.editing.hparams import RomeHyperParams, family_defaults
from romevc.editing.memit import compute_memit
from romevc.editing.memit_hparams import MemitHyperParams, memit_defaults
from romevc.editing.request import EditRequest
from romevc.editing.result import EditResult, MemitResult
from romevc.editing.rome import compute_edit
from romevc.editing.stats import StatsCache
from romevc.editing.templates import generate_templates
from romevc.model import LoadedModel
from romevc.predict import Choice, target_probability, top_k


class Editor:
    """Compute, apply and undo edits on one loaded model."""

    def __init__(self, loaded: LoadedModel, stats: StatsCache | None = None):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.stats = stats or StatsCache()
        self._templates: dict[tuple, tuple[str, ...]] = {}

    def hparams(self, **overrides) -> RomeHyperParams:
        """The family's defaults (layer, clamp) with ``overrides`` (None values ignored) on top."""
        base = {"layer": default_layer(self.model), **family_defaults(self.loaded.architecture.family,
                                                                         num_layers(self.model))}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return RomeHyperParams(**base)

    def memit_hparams(self, **overrides) -> MemitHyperParams:
        """MEMIT's family defaults (layer range, λ) with ``overrides`` (None values ignored) on top."""
        return self._batch_hparams(MemitHyperParams, overrides)

    def _batch_hparams(self, kind: type, overrides: dict):
        base = {**memit_defaults(self.model), **{k: v for k, v in overrides.items() if v is not None}}
        return kind(**base)

    def templates(self, hp: RomeHyperParams | MemitHyperParams) -> tuple[str, ...]:
        """Context templates for (base weights, seed, spec): sampled once, then reused."""
        key = (deltas.base_fingerprint(self.model), hp.seed, hp.templates)
        if key not in self._templates:
            self._templates[key] = generate_templates(self.model, self.tokenizer, hp.seed, hp.templates)
        return self._templates[key]

    def compute(self, request: EditRequest, hparams: RomeHyperParams | None = None) -> EditResult:
        """One edit against the current weights (the model is unchanged afterwards)."""
        hp = hparams or self.hparams()
        return compute_edit(self.model, self.tokenizer, request, hp, stats=self.stats,
                            templates=self.templates(hp))

    def alphaedit_hparams(self, **overrides) -> AlphaEditHyperParams:
        """AlphaEdit's defaults: MEMIT's family range and steps, the null-space energy and α, ``overrides`` on top."""
        return self._batch_hparams(AlphaEditHyperParams, overrides)

    def compute_alphaedit(self, requests: Sequence[EditRequest], hparams: AlphaEditHyperParams | None = None,
                          preserved: PreservedKeys | None = None) -> tuple[MemitResult, list]:
        """One AlphaEdit batch against the current weights, protecting ``preserved`` (the model is unchanged
        afterwards); also returns each layer's keys, for ``preserved.add`` before the next batch."""
        hp = hparams or self.alphaedit_hparams()
        return compute_alphaedit(self.model, self.tokenizer, requests, hp, stats=self.stats, preserved=preserved,
                                 templates=self.templates(hp))

    def compute_memit(self, requests: Sequence[EditRequest], hparams: MemitHyperParams | None = None) -> MemitResult:
        """One MEMIT batch against the current weights (the model is unchanged afterwards)."""
        hp = hparams or self.memit_hparams()
        return compute_memit(self.model, self.tokenizer, requests, hp, stats=self.stats, templates=self.templates(hp))

    def apply(self, edits: Sequence[Delta | EditResult | MemitResult]) -> None:
        """Set the weights to base + these deltas, in order (exact, path-independent)."""
        flat: list[Delta] = []
        for e in edits:
            flat.extend(e.deltas if isinstance(e, MemitResult) else [e.delta if isinstance(e, EditResult) else e])
        deltas.apply(self.model, flat)

    def restore(self) -> None:
        deltas.restore(self.model)

    def applied(self) -> tuple[Delta, ...]:
        return deltas.applied_deltas(self.model)

    def predict(self, prompt: str, k: int = 5) -> list[Choice]:
        return top_k(self.model, self.tokenizer, prompt, k)

    def probability(self, prompt: str, target: str) -> float:
        return target_probability(self.model, self.tokenizer, prompt, target)
