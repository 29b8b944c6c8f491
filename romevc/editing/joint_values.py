"""Several requests' δ optimised side by side: one forward and backward pass per step for all.

MEMIT optimises one δ per request, each on its own prompts; the requests never see each
other's δ. Stacking their rows into one batch therefore leaves each request's loss, its
gradient and (Adam being elementwise, and requests only ever leaving the group) its
whole trajectory what :func:`rome.optimise_value` gives it alone — only the float
rounding of the larger matrix products differs. On a CPU the larger products use the
cores better than twenty-row batches do, which is where MEMIT spends its time.

Per request, exactly as alone: the loss is its mean target NLL + KL on its KL prompt +
weight decay; it stops (its δ frozen) once NLL + KL is below ``early_stop_loss``; its
‖δ‖ is clamped to ``clamp_norm_factor`` × ‖its base value‖. The loss is written out here
rather than shared with :func:`rome.optimise_value`: regrouping that function's sums would
change the bits of every single ROME edit, and stored edits must recompute exactly.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from romevc.architectures import Architecture
from romevc.editing import forward
from romevc.editing.hparams import RomeHyperParams
from romevc.editing.rome import IGNORE, EditPrompts, frozen_parameters
from romevc.errors import EditComputationError


def stack_prompts(group: Sequence[EditPrompts]) -> tuple[forward.PromptBatch, torch.Tensor, torch.Tensor]:
    """All rows of the group in one right-padded batch, their labels, and each row's request index."""
    rows, positions, owners, label_rows = [], [], [], []
    for index, prompts in enumerate(group):
        batch = prompts.batch
        lengths = batch.attention_mask.sum(1).tolist()
        for i, length in enumerate(lengths):
            rows.append(batch.input_ids[i, :length].tolist())
            positions.append(int(batch.subject_positions[i]))
            owners.append(index)
            label_rows.append(prompts.labels[i, :length] if i < prompts.n_rewrite else None)
    stacked = forward.pad_batch(rows, positions, pad_id=0)  # padding is masked out; its id never matters
    labels = torch.full(stacked.input_ids.shape, IGNORE, dtype=torch.long)
    for i, row in enumerate(label_rows):
        if row is not None:
            labels[i, : row.shape[0]] = row
    return stacked, labels, torch.tensor(owners, dtype=torch.long)


def optimise_values_jointly(model, arch: Architecture, layer: int, group: Sequence[EditPrompts],
                            base_values: torch.Tensor, hp: RomeHyperParams, *,
                            inject_into: str) -> tuple[torch.Tensor, list[list[float]]]:
    """δ (n, d) for the n requests of ``group``, added to ``inject_into``'s output at each row's subject.

    ``base_values`` (n, d) are what each δ's norm is measured against. Returns the δs and
    each request's losses, step by step until it stopped.
    """
    device = next(model.parameters()).device
    batch, labels, owners = stack_prompts(group)
    labels, owners = labels.to(device), owners.to(device)
    n = len(group)
    label_rows, label_pos = (labels != IGNORE).nonzero(as_tuple=True)
    label_ids = labels[label_rows, label_pos]
    tokens_per_row = (labels != IGNORE).sum(1).clamp(min=1).float()
    rewrite_rows_per_request = torch.tensor([p.n_rewrite for p in group], device=device, dtype=torch.float32)
    kl_rows = torch.tensor(_kl_row_indices(group), device=device)
    kl_pos_original = batch.subject_positions[kl_rows.cpu()].to(device)
    base_norms = base_values.norm(dim=1).to(device)  # (n,)
    max_norms = hp.clamp_norm_factor * base_norms

    delta = torch.zeros(n, base_values.shape[1], device=device, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=hp.v_lr)
    active = torch.ones(n, dtype=torch.bool, device=device)
    kl_init: torch.Tensor | None = None
    losses: list[list[float]] = [[] for _ in range(n)]
    module = model.get_submodule(inject_into)
    capture = forward.capture_at_layer(model, arch, layer, batch)
    with frozen_parameters(model):
        suffix = forward.SuffixStack(model, arch, layer, capture.layer_input, batch) \
            if forward.suffix_supported(model) else None
        inject_at = suffix.inject_positions if suffix is not None else batch.subject_positions.to(device)
        with forward.add_at_positions(module, delta, inject_at, owners=owners):
            for step in range(hp.v_steps):
                optimiser.zero_grad()
                hidden = suffix.run() if suffix is not None else \
                    forward.run_from_layer(model, arch, layer, capture.layer_input, batch.attention_mask)

                def read(rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
                    columns = suffix.columns(rows, positions) if suffix is not None else positions
                    return forward.logits_at(model, arch, hidden, rows, columns)

                token_nll = -torch.log_softmax(read(label_rows, label_pos), -1).gather(1, label_ids[:, None]).squeeze(1)
                row_nll = torch.zeros(labels.shape[0], device=device).index_add(0, label_rows, token_nll) / tokens_per_row
                nll = torch.zeros(n, device=device).index_add(0, owners, row_nll) / rewrite_rows_per_request
                kl_log_probs = torch.log_softmax(read(kl_rows, kl_pos_original), -1)  # (n, vocab)
                if kl_init is None:
                    kl_init = kl_log_probs.detach().clone()
                kl = hp.kl_factor * F.kl_div(kl_init, kl_log_probs, log_target=True, reduction="none").sum(1)
                decay = hp.v_weight_decay * (delta.norm(dim=1) / base_norms ** 2)
                loss = nll + kl + decay  # (n,): request i's loss depends on δ_i alone
                values = loss.detach().tolist()
                for i in active.nonzero().flatten().tolist():
                    losses[i].append(values[i])
                    if not torch.isfinite(loss[i]):
                        raise EditComputationError(
                            f"the value optimisation diverged (loss {values[i]}) at step {step}; nothing was "
                            "written. Try a smaller --lr or another layer")
                active &= (nll + kl).detach() >= hp.early_stop_loss  # those below stop here, as alone
                if not active.any():
                    break
                frozen = delta.detach().clone()
                loss[active].sum().backward()
                optimiser.step()
                with torch.no_grad():
                    delta[~active] = frozen[~active]  # Adam's momentum would still move a stopped δ
                    norms = delta.norm(dim=1)
                    scale = torch.where(active & (norms > max_norms), max_norms / norms, torch.ones_like(norms))
                    delta.mul_(scale[:, None])
    return delta.detach(), losses


def _kl_row_indices(group: Sequence[EditPrompts]) -> list[int]:
    """Row of each request's KL prompt in :func:`stack_prompts`' batch (the last of its rows)."""
    indices, offset = [], 0
    for prompts in group:
        offset += prompts.batch.input_ids.shape[0]
        indices.append(offset - 1)
    return indices
