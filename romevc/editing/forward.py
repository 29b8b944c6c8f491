"""Forward passes ROME needs: capture a module's input/output, inject δ, run the top of the stack.

The value optimisation only changes what happens from the edited layer up, so the fast
path runs the layers below it once, then feeds the cached hidden states to a stack cut
down to layers ``l..L-1`` (the model's own forward, given ``inputs_embeds``, builds
masks and rotary embeddings as usual). Logits are computed only at the positions the
loss reads, not over the 49k-token vocabulary at every position.
"""
from __future__ import annotations

import contextlib
import inspect
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
def add_at_positions(module: torch.nn.Module, delta: torch.Tensor, positions: torch.Tensor,
                     owners: torch.Tensor | None = None) -> Iterator[None]:
    """Add ``delta`` (d_out,) to ``module``'s output at ``positions[row]`` of every row.

    With ``owners`` (one index per row), ``delta`` is (n, d_out) and row r gets ``delta[owners[r]]``.
    """
    rows = torch.arange(positions.shape[0])

    def hook(_module, _inputs, output):
        output = output.clone()
        added = delta if owners is None else delta[owners]
        output[rows, positions] += added.to(output.dtype)
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


# -- from the subject on: positions before the edit point come from a key/value cache ------

@contextlib.contextmanager
def renumbered_from(model: torch.nn.Module, arch: Architecture, layer: int) -> Iterator[None]:
    """Inside :func:`stack_from`, number the remaining blocks' ``layer_idx`` from 0 so a fresh cache fits them."""
    blocks = list(model.get_submodule(arch.layers))[layer:]
    saved = [(module, module.layer_idx) for block in blocks for module in block.modules() if hasattr(module, "layer_idx")]
    for module, index in saved:
        module.layer_idx = index - layer
    try:
        yield
    finally:
        for module, index in saved:
            module.layer_idx = index


def suffix_supported(model: torch.nn.Module) -> bool:
    """Sliding-window layers keep caches and masks of their own shape: those models run whole rows."""
    return getattr(model.config, "sliding_window", None) is None


class SuffixStack:
    """Layers ``l..L-1`` run only from each row's subject position on.

    δ enters at the subject's last token, so under causal attention every earlier position
    is the same at every optimisation step. Rows are re-aligned so the subject sits in one
    column ``split`` for all of them (left padding, original position ids kept); columns
    before it run once into a key/value cache, and each step runs only the columns from
    ``split`` on — typically a third of the padded width.
    """

    def __init__(self, model: torch.nn.Module, arch: Architecture, layer: int,
                 layer_input: torch.Tensor, batch: PromptBatch):
        from transformers import DynamicCache

        self.model, self.arch, self.layer = model, arch, layer
        device = layer_input.device
        lengths = batch.attention_mask.sum(1).tolist()
        subjects = batch.subject_positions.tolist()
        self.split = max(subjects)
        width = self.split + max(n - s for n, s in zip(lengths, subjects))
        rows, d_model = layer_input.shape[0], layer_input.shape[2]
        hidden = layer_input.new_zeros(rows, width, d_model)
        mask = torch.zeros(rows, width, dtype=torch.long)
        position_ids = torch.zeros(rows, width, dtype=torch.long)
        for i, (n, s) in enumerate(zip(lengths, subjects)):
            start = self.split - s
            hidden[i, start : start + n] = layer_input[i, :n]
            mask[i, start : start + n] = 1
            position_ids[i, start:] = torch.arange(width - start)
        self.subject_positions = batch.subject_positions.to(device)
        self.mask, self.position_ids = mask.to(device), position_ids.to(device)
        self.suffix = hidden[:, self.split :]
        self.backbone = model.get_submodule(arch.layers.rpartition(".")[0])
        # transformers 5.x renamed ``past_key_values`` to ``cache``; 4.56+ knows only the former.
        self.cache_argument = "cache" if "cache" in inspect.signature(self.backbone.forward).parameters \
            else "past_key_values"
        self.cache_class = DynamicCache
        self.prefix_cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if self.split:
            with torch.no_grad():
                cache = DynamicCache()
                self._run(hidden[:, : self.split], self.mask[:, : self.split], self.position_ids[:, : self.split], cache)
            self.prefix_cache = [(part.keys, part.values) for part in cache.layers]

    def _run(self, hidden: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor, cache) -> torch.Tensor:
        if self.arch.position_embed is not None:  # GPT-2 adds learned positions to inputs_embeds: cancel that
            hidden = hidden - self.model.get_submodule(self.arch.position_embed)(position_ids)
        with renumbered_from(self.model, self.arch, self.layer), stack_from(self.model, self.arch, self.layer):
            out = self.backbone(inputs_embeds=hidden, attention_mask=mask, position_ids=position_ids,
                                use_cache=cache is not None, **{self.cache_argument: cache})
        return out.last_hidden_state

    @property
    def inject_positions(self) -> torch.Tensor:
        """Where δ goes in the suffix: its first column, in every row."""
        return torch.zeros_like(self.subject_positions)

    def run(self) -> torch.Tensor:
        """Final hidden states (rows, suffix width, d_model); column j is position split + j of the aligned rows."""
        cache = self.cache_class(ddp_cache_data=self.prefix_cache) if self.prefix_cache else None
        return self._run(self.suffix, self.mask, self.position_ids[:, self.split :], cache)

    def columns(self, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Suffix columns of original (right-padded) positions."""
        return positions - self.subject_positions[rows]
