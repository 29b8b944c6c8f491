"""ROME's hyperparameters, validated, with the paper's values as defaults.

Values follow the ROME paper's configs (rome/hparams/ROME/*.json): 20 Adam steps at
lr 0.5, weight decay 0.5, KL factor 0.0625, clamp 4 (3 for gpt2-medium). The seed is
part of the hyperparameters, so an edit can be recomputed exactly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from romevc.errors import HyperParamsError

METHODS = ("rome", "r-rome")
MAX_SEED = 2**63 - 1  # torch.Generator takes 64 bits; the ledger stores a signed 64-bit integer
MAX_TEMPLATE_TOKENS = 1024  # longer prefixes would crowd out the prompt in every context window we support
MAX_TEMPLATE_COUNT = 1000  # each prefix costs one forward pass per optimisation step


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _templates(spec: object) -> tuple[tuple[int, int], ...]:
    """``spec`` as (tokens, count) pairs of integers, or :class:`HyperParamsError`."""
    pairs = list(spec) if isinstance(spec, (list, tuple)) else None
    if pairs is None or not all(isinstance(p, (list, tuple)) and len(p) == 2 and all(map(_is_int, p)) for p in pairs):
        raise HyperParamsError(f"`templates` must be a list of [tokens, count] integer pairs, got {spec!r}")
    for tokens, count in pairs:
        if not (1 <= tokens <= MAX_TEMPLATE_TOKENS and 0 <= count <= MAX_TEMPLATE_COUNT):
            raise HyperParamsError(f"`templates`: each pair needs 1 to {MAX_TEMPLATE_TOKENS} tokens and 0 to "
                                   f"{MAX_TEMPLATE_COUNT} prefixes, got [{tokens}, {count}]")
    return tuple((tokens, count) for tokens, count in pairs)


@dataclass(frozen=True)
class RomeHyperParams:
    method: str = field(default="r-rome", metadata={
        "help": "'r-rome' (one averaged key everywhere; stable under sequential edits) or 'rome' "
                "(the paper's code: the bare prompt's key in the update's denominator)"})
    layer: int | None = field(default=None, metadata={"help": "layer to edit; None = the family default"})
    seed: int = field(default=0, metadata={"help": "seed of the context-template sampler"})
    v_steps: int = field(default=20, metadata={"help": "Adam steps optimising the value δ"})
    v_lr: float = field(default=0.5, metadata={"help": "Adam learning rate for δ"})
    v_weight_decay: float = field(default=0.5, metadata={"help": "penalty on ‖δ‖ / ‖v‖²"})
    kl_factor: float = field(default=0.0625, metadata={
        "help": "weight of KL(next-token distribution on the KL prompt) that keeps the subject's essence"})
    clamp_norm_factor: float = field(default=4.0, metadata={"help": "‖δ‖ is clamped to this × ‖v‖"})
    early_stop_loss: float = field(default=5e-2, metadata={
        "help": "stop once NLL + KL is below this (the reference's 5e-2, which it applies to the total "
                "loss; the weight-decay term alone sits near 5e-2 on small models and would never stop)"})
    kl_prompt: str = field(default="{} is a", metadata={"help": "prompt whose prediction the KL term keeps"})
    templates: tuple[tuple[int, int], ...] = field(default=((5, 10), (10, 10)), metadata={
        "help": "context prefixes as (tokens, count) pairs; the paper uses 10 of 5 and 10 of 10"})
    prompt_key: bool = field(default=True, metadata={
        "help": "r-rome: the update also sends the bare prompt's own key to v* (u meets uᵀk̄ = 1 and "
                "uᵀk₀ = 1 at the least C-norm), so a prompt that starts with the subject is edited too; "
                "rome always normalises by the bare key, and ignores this"})
    fast_path: bool = field(default=True, metadata={
        "help": "run the layers below the edited one once per edit and skip parameter gradients"})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise HyperParamsError(f"`method` must be one of {METHODS}, got {self.method!r}")
        if self.layer is not None and not (_is_int(self.layer) and self.layer >= 0):
            raise HyperParamsError(f"`layer` must be a non-negative integer or None, got {self.layer!r}")
        if not (_is_int(self.seed) and 0 <= self.seed <= MAX_SEED):
            raise HyperParamsError(f"`seed` must be an integer from 0 to 2**63 - 1, got {self.seed!r}")
        if not (_is_int(self.v_steps) and self.v_steps >= 1):
            raise HyperParamsError(f"`v_steps` must be a positive integer, got {self.v_steps!r}")
        for name, low in (("v_lr", "positive"), ("clamp_norm_factor", "positive"), ("v_weight_decay", "non-negative"),
                          ("kl_factor", "non-negative"), ("early_stop_loss", "non-negative")):
            value = getattr(self, name)
            if not (_is_number(value) and (value > 0 if low == "positive" else value >= 0)):
                raise HyperParamsError(f"`{name}` must be a finite {low} number, got {value!r}")
        if not isinstance(self.kl_prompt, str) or self.kl_prompt.count("{}") != 1:
            raise HyperParamsError(f"`kl_prompt` must be a string holding exactly one '{{}}', got {self.kl_prompt!r}")
        for name in ("fast_path", "prompt_key"):
            if not isinstance(getattr(self, name), bool):
                raise HyperParamsError(f"`{name}` must be true or false, got {getattr(self, name)!r}")
        if self.method == "rome":
            object.__setattr__(self, "prompt_key", False)  # rome's u is normalised by the bare key alone
        object.__setattr__(self, "templates", _templates(self.templates))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["templates"] = [list(pair) for pair in self.templates]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "RomeHyperParams":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        # Edits stored before ``prompt_key`` existed were computed without it: recompute them so.
        known.setdefault("prompt_key", False)
        return cls(**known)


def family_defaults(family: str, n_layers: int) -> dict:
    """Per-family deviations from the defaults (the paper's gpt2-medium uses clamp 3)."""
    if family == "gpt2" and n_layers == 24:
        return {"clamp_norm_factor": 3.0}
    return {}
