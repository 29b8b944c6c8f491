"""Reading the model: next-token choices and the probability of a given continuation.

Probabilities of a multi-token target follow the ROME paper: the mean per-token NLL of
the target, teacher-forced after the prompt, turned back into a probability.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from romevc.editing.forward import pad_rows
from romevc.editing.rome import target_token_ids


@dataclass(frozen=True)
class Choice:
    token: str
    probability: float


@torch.no_grad()
def top_k(model: torch.nn.Module, tokenizer, prompt: str, k: int = 5) -> list[Choice]:
    """The ``k`` most likely next tokens after ``prompt``."""
    device = next(model.parameters()).device
    batch = tokenizer(prompt, return_tensors="pt").to(device)
    probs = model(**batch, use_cache=False).logits[0, -1].float().softmax(-1)
    values, ids = probs.topk(k)
    return [Choice(tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, ids)]


@torch.no_grad()
def target_nll(model: torch.nn.Module, tokenizer, prompts: Sequence[str], targets: Sequence[str]) -> list[float]:
    """Mean per-token NLL of each ``target`` after its ``prompt`` (teacher-forced), one batch."""
    device = next(model.parameters()).device
    rows, spans = [], []
    for prompt, target in zip(prompts, targets):
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = target_token_ids(tokenizer, prompt, target)
        rows.append(prompt_ids + ids)
        spans.append((len(prompt_ids), len(ids)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids, mask = pad_rows(rows, pad)
    row_of = torch.cat([torch.full((length,), i) for i, (_, length) in enumerate(spans)])
    positions = torch.cat([torch.arange(start - 1, start - 1 + length) for start, length in spans])
    tokens = input_ids[row_of, positions + 1].to(device)
    logits = _logits_where_read(model, input_ids.to(device), mask.to(device), row_of.to(device), positions.to(device))
    token_nll = -torch.log_softmax(logits, -1).gather(1, tokens[:, None]).squeeze(1)
    return [float(part.mean()) for part in token_nll.split([length for _, length in spans])]


def _logits_where_read(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor,
                       rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Float32 next-token logits at (rows[i], positions[i]) only.

    The vocabulary projection is a fifth of a 135M model's work per token; scoring reads it
    at the target's few positions, so the backbone runs whole and the head only there. A
    model of no known family (any forward that returns logits) runs whole.
    """
    from romevc.architectures import ARCHITECTURES
    from romevc.editing.forward import logits_at

    arch = ARCHITECTURES.get(getattr(getattr(model, "config", None), "model_type", None))
    if arch is None:
        return model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[rows, positions].float()
    backbone = model.get_submodule(arch.layers.rpartition(".")[0])
    hidden = backbone(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
    return logits_at(model, arch, hidden, rows, positions)


def target_probability(model, tokenizer, prompt: str, target: str) -> float:
    """exp(−mean NLL) of ``target`` after ``prompt``."""
    return math.exp(-target_nll(model, tokenizer, [prompt], [target])[0])
