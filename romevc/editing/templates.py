"""Seeded context prefixes ("{}" templates) that make an edit hold in more than one context.

ROME averages the key over the bare prompt and prompts behind short model-generated
prefixes (paper: 10 of 5 tokens and 10 of 10 tokens), and optimises the value under the
same prefixes. The reference sampler is unseeded and, under transformers 5.x, feeds a
one-column attention mask with a KV cache, so every prefix comes out as punctuation.
Here the library's ``generate`` samples with a correct mask, from a seed, on the
unedited weights, and the prefixes are stored with the edit.
"""
from __future__ import annotations

from typing import Sequence

import torch

from romevc.editing.delta import base_weights

# Each prefix starts from one of these words, in turn (as in the MEMIT reference code).
STARTERS = ("The", "Therefore", "Because", "I", "You")
DEFAULT_SPEC: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))  # (tokens, how many)
TOP_K = 5  # the reference samples from the top 5 tokens: varied but grammatical


def _document_start(tokenizer) -> str:
    """The text that begins a document in pre-training, so samples read as ordinary prose.

    Byte-level BPE models (GPT-2, NeoX, SmolLM2, Qwen2) separate documents with
    ``<|endoftext|>``; SentencePiece models (LLaMA, Mistral, Gemma) get their BOS from the
    tokeniser itself. Without it SmolLM2 continues "The" with "-the-key-to-...".
    """
    vocab = tokenizer.get_vocab()
    if "<|endoftext|>" in vocab:
        return "<|endoftext|>"
    return ""


def _clean(text: str) -> str:
    """One line, no braces (they would break ``str.format``)."""
    text = text.replace("{", " ").replace("}", " ")
    return " ".join(text.split())


@torch.no_grad()
def generate_templates(
    model: torch.nn.Module,
    tokenizer,
    seed: int,
    spec: Sequence[tuple[int, int]] = DEFAULT_SPEC,
) -> tuple[str, ...]:
    """``("{}", "<prefix>. {}", ...)``: the bare prompt first, then one template per sample."""
    device = next(model.parameters()).device
    templates = ["{}"]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        with base_weights(model), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # global RNG is forked: the caller's state is untouched
            for length, count in spec:
                starters = [_document_start(tokenizer) + STARTERS[i % len(STARTERS)] for i in range(count)]
                batch = tokenizer(starters, return_tensors="pt", padding=True).to(device)
                out = model.generate(
                    **batch, do_sample=True, top_k=TOP_K, top_p=1.0, temperature=1.0,
                    max_new_tokens=length, min_new_tokens=length, pad_token_id=pad_id,
                )
                for row in out:
                    text = _clean(tokenizer.decode(row, skip_special_tokens=True))
                    templates.append(f"{text}. {{}}")
    finally:
        tokenizer.padding_side = old_side
    return tuple(templates)
