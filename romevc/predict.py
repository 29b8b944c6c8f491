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
    log_probs = torch.log_softmax(
        model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float(), -1
    )
    out = []
    for i, (start, length) in enumerate(spans):
        positions = torch.arange(start - 1, start - 1 + length, device=device)
        tokens = input_ids[i, start : start + length].to(device)
        out.append(float(-log_probs[i, positions, tokens].mean()))
    return out


def target_probability(model, tokenizer, prompt: str, target: str) -> float:
    """exp(−mean NLL) of ``target`` after ``prompt``."""
    return math.exp(-target_nll(model, tokenizer, [prompt], [target])[0])
