"""Forward passes ROME needs: capture a module's input/output, inject δ, run the top of the stack.

The value optimisation only changes what happens from the edited layer up, so the fast
path runs the layers below it once, then feeds the cached hidden states to a stack cut
down to layers ``l..L-1`` (the model's own forward, given ``inputs_embeds``, builds
masks and rotary embeddings as usual). Logits are computed only at the positions the
loss reads, not over the 49k-token vocabulary at every position.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from romevc.architectures import Architecture


@dataclass(frozen=True)
class PromptBatch:
    """Right-padded token ids and, per row, the position where δ is added (subject's last token)."""

    input_ids: torch.Tensor  # (batch, seq)
    attention_mask: torch.Tensor  # (batch, seq)
    subject_positions: torch.Tensor  # (batch,)


def pad_rows(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask), each (batch, longest row)."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def pad_batch(rows: Sequence[list[int]], positions: Sequence[int], pad_id: int) -> PromptBatch:
    ids, mask = pad_rows(rows, pad_id)
    return PromptBatch(ids, mask, torch.tensor(list(positions), dtype=torch.long))


class StopForward(Exception):
    """Raised once everything needed has been captured: the layers above cannot matter."""


@dataclass
class Capture:
    """What one no-grad pass records at the edited layer."""

    layer_input: torch.Tensor  # (batch, seq, d_model): hidden states entering the layer
    keys: torch.Tensor  # (batch, d_in): edited module input at each row's subject position
    values: torch.Tensor  # (batch, d_out): edited module output there


@torch.no_grad()
def capture_at_layer(model: torch.nn.Module, arch: Architecture, layer: int, batch: PromptBatch) -> Capture:
    """One forward pass up to ``layer`` recording its input hidden states and the module's key/value."""
    device = next(model.parameters()).device
    rows = torch.arange(batch.input_ids.shape[0])
    found: dict[str, torch.Tensor] = {}

    def on_layer(_module, args, kwargs):
        found["layer_input"] = (args[0] if args else kwargs["hidden_states"]).detach()

    def on_module(_module, inputs, output):
        found["keys"] = inputs[0][rows, batch.subject_positions].detach().float()
        found["values"] = output[rows, batch.subject_positions].detach().float()
        raise StopForward

    block = model.get_submodule(arch.layer_prefix(layer))
    edited = model.get_submodule(arch.edited_module_name(layer))
    handles = [block.register_forward_pre_hook(on_layer, with_kwargs=True), edited.register_forward_hook(on_module)]
    try:
        model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), use_cache=False)
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return Capture(found["layer_input"], found["keys"], found["values"])


@contextlib.contextmanager
def add_at_positions(module: torch.nn.Module, delta: torch.Tensor, positions: torch.Tensor) -> Iterator[None]:
    """Add ``delta`` (d_out,) to ``module``'s output at ``positions[row]`` of every row."""
    rows = torch.arange(positions.shape[0])

    def hook(_module, _inputs, output):
        output = output.clone()
        output[rows, positions] += delta.to(output.dtype)
        return output

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def stack_from(model: torch.nn.Module, arch: Architecture, layer: int) -> Iterator[None]:
    """Temporarily cut the model's block list down to ``layer..L-1``.

    Per-layer attention kinds (Gemma 3's sliding/full ``layer_types``) are cut alike so
    each remaining block keeps its own mask.
    """
    parent_name, _, list_name = arch.layers.rpartition(".")
    parent = model.get_submodule(parent_name)
    full = getattr(parent, list_name)
    config = model.config
    layer_types = getattr(config, "layer_types", None)
    setattr(parent, list_name, torch.nn.ModuleList(list(full)[layer:]))
    if layer_types is not None:
        config.layer_types = list(layer_types)[layer:]
    try:
        yield
    finally:
        setattr(parent, list_name, full)
        if layer_types is not None:
            config.layer_types = layer_types


def run_from_layer(model: torch.nn.Module, arch: Architecture, layer: int,
                   layer_input: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final (normed) hidden states (batch, seq, d_model), starting at ``layer`` from cached inputs."""
    backbone = model.get_submodule(arch.layers.rpartition(".")[0])
    hidden = layer_input
    if arch.position_embed is not None:
        # GPT-2 adds learned positions to inputs_embeds before block 0: cancel that here.
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        hidden = hidden - model.get_submodule(arch.position_embed)(positions).unsqueeze(0)
    with stack_from(model, arch, layer):
        out = backbone(inputs_embeds=hidden, attention_mask=attention_mask.to(hidden.device), use_cache=False)
    return out.last_hidden_state


def logits_at(model: torch.nn.Module, arch: Architecture, hidden: torch.Tensor,
              rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Next-token logits (n, vocab) at (rows[i], positions[i]) only, in float32."""
    logits = model.get_submodule(arch.head)(hidden[rows, positions]).float()
    cap = getattr(model.config, "final_logit_softcapping", None)  # Gemma squashes logits with tanh
    return torch.tanh(logits / cap) * cap if cap else logits
