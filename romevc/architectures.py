"""Where each model family keeps the pieces ROME touches.

The edited weight's orientation is *declared* here and stored with every delta: GPT-2's
``Conv1D`` keeps its weight as (in, out), everyone else's ``nn.Linear`` as (out, in).
Guessing it from the shape would be wrong for square matrices, which exist.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from romevc.errors import LayerOutOfRangeError, UnsupportedArchitectureError

LAYOUT_LINEAR = "out_in"  # nn.Linear: weight (d_out, d_in), y = x W^T + b
LAYOUT_CONV1D = "in_out"  # transformers' Conv1D: weight (d_in, d_out), y = x W + b


@dataclass(frozen=True)
class Architecture:
    """Module names of one model family, relative to the ``*ForCausalLM`` model."""

    family: str
    layers: str  # the ModuleList of transformer blocks
    mlp: str  # the MLP inside a block
    edited: str  # the MLP's output projection inside a block: the weight ROME rewrites
    attention: str  # the attention module inside a block
    final_norm: str
    head: str
    embed: str
    layout: str
    # GPT-2 adds learned position embeddings to the token embeddings before block 0;
    # feeding cached hidden states as ``inputs_embeds`` must subtract them first.
    position_embed: str | None = None
    # ROME paper configs (rome/hparams/ROME/*.json) and our own sweep for the demo model.
    default_layer: int | None = None

    def layer_prefix(self, layer: int) -> str:
        return f"{self.layers}.{layer}"

    def edited_module_name(self, layer: int) -> str:
        """Dotted name of the edited projection in ``layer``, e.g. ``model.layers.5.mlp.down_proj``."""
        return f"{self.layers}.{layer}.{self.edited}"

    def module_template(self) -> str:
        return f"{self.layers}.{{}}.{self.edited}"


_GPT2 = Architecture(
    family="gpt2", layers="transformer.h", mlp="mlp", edited="mlp.c_proj", attention="attn",
    final_norm="transformer.ln_f", head="lm_head", embed="transformer.wte",
    layout=LAYOUT_CONV1D, position_embed="transformer.wpe",
)
_GPTJ = Architecture(
    family="gptj", layers="transformer.h", mlp="mlp", edited="mlp.fc_out", attention="attn",
    final_norm="transformer.ln_f", head="lm_head", embed="transformer.wte",
    layout=LAYOUT_LINEAR, default_layer=5,
)
_NEOX = Architecture(
    family="gpt_neox", layers="gpt_neox.layers", mlp="mlp", edited="mlp.dense_4h_to_h",
    attention="attention", final_norm="gpt_neox.final_layer_norm", head="lm_head",
    embed="gpt_neox.embed_in", layout=LAYOUT_LINEAR, default_layer=15,
)


def _llama_like(family: str) -> Architecture:
    return Architecture(
        family=family, layers="model.layers", mlp="mlp", edited="mlp.down_proj",
        attention="self_attn", final_norm="model.norm", head="lm_head",
        embed="model.embed_tokens", layout=LAYOUT_LINEAR,
    )


# Keyed by ``config.model_type``. SmolLM2 reports ``llama``.
ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": _GPT2,
    "gptj": _GPTJ,
    "gpt_neox": _NEOX,
    "llama": _llama_like("llama"),
    "qwen2": _llama_like("qwen2"),
    "mistral": _llama_like("mistral"),
    "gemma3_text": _llama_like("gemma3_text"),
}

# GPT-2 sizes differ only in depth; the paper edits a different layer for each.
_GPT2_LAYER_BY_DEPTH = {24: 8, 36: 12, 48: 17}  # gpt2-medium, gpt2-large, gpt2-xl
# The demo model (SmolLM2-135M, 30 layers): chosen by the sweep recorded in README.md.
SMOLLM2_135M_LAYER = 4


def architecture_for(model: torch.nn.Module) -> Architecture:
    """The table entry for ``model``, or an error naming the supported families."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedArchitectureError(
            f"model type {model_type!r} is not supported; supported: {supported}"
        )
    return ARCHITECTURES[model_type]


def num_layers(model: torch.nn.Module) -> int:
    return len(model.get_submodule(architecture_for(model).layers))


def default_layer(model: torch.nn.Module) -> int:
    """The layer ROME edits when none is given: paper configs, our sweep, else ~1/6 depth."""
    arch = architecture_for(model)
    depth = num_layers(model)
    if arch.family == "gpt2" and depth in _GPT2_LAYER_BY_DEPTH:
        return _GPT2_LAYER_BY_DEPTH[depth]
    if arch.family == "llama" and depth == 30 and model.config.hidden_size == 576:
        return SMOLLM2_135M_LAYER
    if arch.default_layer is not None and arch.default_layer < depth:
        return arch.default_layer
    return max(0, min(depth - 1, round(depth * 0.17)))


def check_layer(model: torch.nn.Module, layer: int) -> None:
    depth = num_layers(model)
    if not 0 <= layer < depth:
        raise LayerOutOfRangeError(f"layer {layer} is out of range: this model has layers 0..{depth - 1}")


def edited_weight(model: torch.nn.Module, layer: int) -> torch.nn.Parameter:
    return model.get_submodule(architecture_for(model).edited_module_name(layer)).weight


def as_out_in(weight: torch.Tensor, layout: str) -> torch.Tensor:
    """View ``weight`` as (d_out, d_in) whatever its stored layout."""
    return weight.T if layout == LAYOUT_CONV1D else weight
