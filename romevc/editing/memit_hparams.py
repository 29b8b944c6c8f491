"""MEMIT's hyperparameters, validated, with the paper's values as defaults.

MEMIT (Meng et al. 2023) spreads a batch of edits over a range of layers. Its value
optimisation is ROME's, with one difference that changes a constant: δ is added to the
residual stream after the range's last layer, not to one MLP's output, so the clamp is
relative to a hidden state's norm — 0.75 in the paper's configs (hparams/MEMIT/*.json)
where ROME uses 4 — and the context prefixes are MEMIT's: the bare prompt and five of ten
tokens (ROME's code takes twenty), which makes each δ about 3.5× cheaper. The
value-optimisation fields are checked by building the equivalent :class:`RomeHyperParams`,
so both methods accept and refuse exactly the same values.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch

from romevc.architectures import architecture_for, default_layer, num_layers
from romevc.editing.hparams import RomeHyperParams
from romevc.errors import HyperParamsError

# The paper's ranges (hparams/MEMIT/*.json): (family, depth) -> (layers, mom2_update_weight, v_steps).
_PAPER = {
    ("gpt2", 48): ((13, 14, 15, 16, 17), 20_000.0, 20),  # GPT-2 XL
    ("gptj", 28): ((3, 4, 5, 6, 7, 8), 15_000.0, 25),  # GPT-J 6B
}
# The demo model (SmolLM2-135M, d_ff 1536), measured by benchmarks/memit_layers.py on
# CounterFact-train records 0-9 edited as one batch (unedited: ES 10, PS 20, NS 90):
#   layers 3-5, λ 15000 / 5000 / 1500 / 500: ES 70 / 90 / 100 / 100, PS 60 / 80 / 90 / 90, NS 90 throughout
#   layers 2-6, λ 15000 / 5000 / 1500:       ES 60 / 90 / 100,       PS 70 / 70 / 70
#   layers 4-6, λ 1500 / 500:                ES 100 / 100,           PS 60 / 80
# The subjects' keys have kᵀC⁻¹k of 2,500-17,000 here, so the paper's λ = 15000 lets each layer
# carry only a fraction of its share. 3-5 (around ROME's layer 4) generalises best; λ = 1500
# reaches every fact with smaller updates than 500 (‖ΔW‖ of layer 3: 14.1 against 17.3).
BATCH_METHODS = ("memit", "alphaedit")  # edit in batches spread over a layer range; the others edit one layer
SMOLLM2_135M_LAYERS = (3, 4, 5)
SMOLLM2_135M_UPDATE_WEIGHT = 1500.0
DEFAULT_SPAN = 5  # elsewhere: the five layers ending at ROME's layer, like the paper's GPT-2 XL range


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class MemitHyperParams:
    layers: tuple[int, ...] | None = field(default=None, metadata={
        "help": "the edited layers, strictly ascending; δ is optimised after the last one. None = the family's "
                "range (Editor.memit_hparams also fills in the family's λ and steps)"})
    mom2_update_weight: float = field(default=15_000.0, metadata={
        "help": "λ in ΔW = R Kᵀ(λ·C + K Kᵀ)⁻¹ with C = E[k kᵀ]: how hard the update protects the keys of "
                "ordinary text against the batch's keys (paper: 20000 for GPT-2 XL, 15000 for GPT-J)"})
    seed: int = field(default=0, metadata={"help": "seed of the context-template sampler"})
    v_steps: int = field(default=20, metadata={"help": "Adam steps optimising each request's δ"})
    v_lr: float = field(default=0.5, metadata={"help": "Adam learning rate for δ"})
    v_weight_decay: float = field(default=0.5, metadata={"help": "penalty on ‖δ‖ / ‖h‖²"})
    kl_factor: float = field(default=0.0625, metadata={
        "help": "weight of KL(next-token distribution on the KL prompt) that keeps the subject's essence"})
    clamp_norm_factor: float = field(default=0.75, metadata={
        "help": "‖δ‖ is clamped to this × ‖h‖, h the hidden state after the last layer at the subject"})
    early_stop_loss: float = field(default=5e-2, metadata={"help": "stop a δ once NLL + KL is below this"})
    kl_prompt: str = field(default="{} is a", metadata={"help": "prompt whose prediction the KL term keeps"})
    templates: tuple[tuple[int, int], ...] = field(default=((10, 5),), metadata={
        "help": "context prefixes as (tokens, count) pairs; MEMIT's code uses 5 of 10 tokens (ROME's: 10 of 5 "
                "and 10 of 10). Each prefix is one more row in every step of every request's δ"})
    fast_path: bool = field(default=True, metadata={
        "help": "run the layers below the last edited one once per request and skip parameter gradients"})
    # 16 side by side: 2.0x faster per δ than one at a time on this machine (2 threads, demo model,
    # 6 templates: 4.07 → 2.06 s per fact for 10 requests; targets within 3e-5 of ‖δ‖), 1.9 GB peak.
    target_group: int = field(default=16, metadata={
        "help": "requests whose δ are optimised side by side in one batched pass per step; each δ still "
                "sees only its own prompts, so this changes speed and float rounding, not the objective"})

    def __post_init__(self) -> None:
        if self.layers is not None:
            layers = self.layers
            if (not isinstance(layers, (list, tuple)) or not layers or not all(_is_int(l) and l >= 0 for l in layers)
                    or any(a >= b for a, b in zip(layers, layers[1:]))):
                raise HyperParamsError(
                    f"`layers` must be a non-empty, strictly ascending list of non-negative integers, got {layers!r}")
            object.__setattr__(self, "layers", tuple(layers))
        weight = self.mom2_update_weight
        if not (isinstance(weight, (int, float)) and not isinstance(weight, bool) and math.isfinite(weight)
                and weight > 0):
            raise HyperParamsError(f"`mom2_update_weight` must be a finite positive number, got {weight!r}")
        object.__setattr__(self, "mom2_update_weight", float(weight))
        if not (_is_int(self.target_group) and self.target_group >= 1):
            raise HyperParamsError(f"`target_group` must be a positive integer, got {self.target_group!r}")
        if self.target_group > 1 and not self.fast_path:
            raise HyperParamsError("`target_group` above 1 needs `fast_path`: the plain path runs each request alone")
        object.__setattr__(self, "templates", self.value_hparams().templates)  # validates the shared fields

    def value_hparams(self) -> RomeHyperParams:
        """ROME's hyperparameters for the δ optimisation after the last layer."""
        shared = {f.name: getattr(self, f.name) for f in fields(RomeHyperParams) if hasattr(self, f.name)}
        shared["layer"] = self.layers[-1] if self.layers else None
        return RomeHyperParams(**shared)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["layers"] = list(self.layers) if self.layers is not None else None
        data["templates"] = [list(pair) for pair in self.templates]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "MemitHyperParams":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        # Batches stored before ``target_group`` existed optimised each δ alone: recompute them so.
        known.setdefault("target_group", 1)
        return cls(**known)


def memit_defaults(model: torch.nn.Module) -> dict:
    """The layer range (and, for the paper's models, λ and steps) MEMIT uses on ``model``."""
    arch = architecture_for(model)
    depth = num_layers(model)
    if (arch.family, depth) in _PAPER:
        layers, weight, steps = _PAPER[arch.family, depth]
        return {"layers": layers, "mom2_update_weight": weight, "v_steps": steps}
    if arch.family == "llama" and depth == 30 and model.config.hidden_size == 576:
        return {"layers": SMOLLM2_135M_LAYERS, "mom2_update_weight": SMOLLM2_135M_UPDATE_WEIGHT}
    last = default_layer(model)
    return {"layers": tuple(range(max(0, last - DEFAULT_SPAN + 1), last + 1))}
