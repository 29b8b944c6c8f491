"""The tiny GPT-2 fixture (built by examples/train_tiny_gpt2.py) loads and knows its facts.

ROME tests on the GPT-2 architecture rely on this: if the model did not recall a fact before
an edit, a successful edit could not be told apart from noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-gpt2"
MIN_ACCURACY = 0.90  # the training script stops at 0.99; leave room for other torch builds
FIXTURE_SIZE_LIMIT = 3_000_000  # bytes: the fixture lives in git


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(FIXTURE).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(FIXTURE)


@pytest.fixture(scope="module")
def facts() -> list[dict]:
    return json.loads((FIXTURE / "facts.json").read_text())


def test_fixture_is_small_and_safetensors_only():
    files = {p.name for p in FIXTURE.iterdir()}
    assert "model.safetensors" in files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    assert sum(p.stat().st_size for p in FIXTURE.iterdir()) < FIXTURE_SIZE_LIMIT


def test_model_is_gpt2_with_conv1d_projection(model):
    assert model.config.model_type == "gpt2"
    c_proj = model.transformer.h[0].mlp.c_proj
    # Conv1D stores its weight as (in, out): (n_inner, n_embd).
    assert tuple(c_proj.weight.shape) == (model.config.n_inner, model.config.n_embd)


def test_facts_have_the_documented_fields(facts):
    assert len(facts) >= 100
    for fact in facts:
        assert set(fact) == {"subject", "relation", "prompt", "paraphrases", "target"}
        assert "{}" in fact["prompt"] and all("{}" in p for p in fact["paraphrases"])


def test_target_tokenizes_as_one_token_after_the_prompt(tokenizer, facts):
    for fact in facts:
        prompt = fact["prompt"].format(fact["subject"])
        prompt_ids = tokenizer(prompt)["input_ids"]
        full_ids = tokenizer(prompt + " " + fact["target"])["input_ids"]
        assert full_ids == prompt_ids + [tokenizer.convert_tokens_to_ids(fact["target"])]
        assert tokenizer.unk_token_id not in full_ids


def test_tokenizer_round_trips(tokenizer):
    text = "Tomas Varek lives in the city of Rome"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


@torch.no_grad()
def test_model_recalls_main_prompts(model, tokenizer, facts):
    prompts = [fact["prompt"].format(fact["subject"]) for fact in facts]
    encoded = tokenizer(prompts, padding=True, return_tensors="pt")  # right padding
    logits = model(**encoded).logits  # (facts, time, vocab)
    last = encoded["attention_mask"].sum(dim=1) - 1  # (facts,) last real prompt token
    predicted = logits[torch.arange(len(facts)), last].argmax(dim=-1)  # (facts,)
    expected = torch.tensor(tokenizer.convert_tokens_to_ids([fact["target"] for fact in facts]))
    accuracy = (predicted == expected).float().mean().item()
    assert accuracy >= MIN_ACCURACY, f"top-1 accuracy {accuracy:.3f} on main prompts"
