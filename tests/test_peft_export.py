"""``export --format peft|full|romevc``: the LoRA adapter reproduces the romevc checkout's logits.

The adapter is loaded the way a user without romevc would: ``transformers`` for the base,
``peft.PeftModel.from_pretrained`` for the folder.
"""
from __future__ import annotations

import json

import pytest
import torch

from romevc.porcelain.errors import ExportError, NothingToDoError
from romevc.remotes.editset import read_editset
from romevc.remotes.exports import export
from romevc.remotes.peft_export import CONFIG_FILE, WEIGHTS_FILE
from test_remote import FIXTURE, C, copy, seeded, state  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["Tomas Varek lives in the city of", "Ines Zatok lives in the city of", "Pavel Tupok lives in the city of"]


@pytest.fixture()
def edited(copy):
    """A and B on layer 1 (K = 2), C on layer 2 (K = 1): two modules of different rank."""
    repo = copy("repo")
    repo.edit(C, {"layer": 2}, time=3)
    assert [e.layer for e in repo.records("HEAD")] == [1, 1, 2]
    return repo


def logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits  # (prompts, time, vocab)


def test_the_adapter_reproduces_the_edited_logits(edited, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = export(edited, "HEAD", tmp_path / "adapter", "peft")
    loaded = edited.model("HEAD")
    expected = logits(loaded.model, loaded.tokenizer).clone()
    base = AutoModelForCausalLM.from_pretrained(str(FIXTURE), dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, str(out)).eval()
    got = logits(adapted, loaded.tokenizer)
    assert (got - expected).abs().max().item() <= 1e-5
    unedited = logits(edited.model(None).model, loaded.tokenizer)
    assert (unedited - expected).abs().max().item() > 1e-2  # the edits do change these logits


def test_the_adapter_files(edited, tmp_path):
    from huggingface_hub import ModelCard
    from safetensors import safe_open

    out = export(edited, "HEAD", tmp_path / "adapter", "peft")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", CONFIG_FILE, WEIGHTS_FILE]
    config = json.loads((out / CONFIG_FILE).read_text())
    layer1, layer2 = "transformer.h.1.mlp.c_proj", "transformer.h.2.mlp.c_proj"
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["fan_in_fan_out"]) == ("LORA", 2, 2, True)
    assert config["target_modules"] == [layer1, layer2]
    assert config["rank_pattern"] == config["alpha_pattern"] == {layer2: 1}
    assert config["base_model_name_or_path"] == str(FIXTURE.resolve()) and config["lora_dropout"] == 0.0
    with safe_open(str(out / WEIGHTS_FILE), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert shapes == {f"base_model.model.{layer1}.lora_A.weight": (2, 256),
                      f"base_model.model.{layer1}.lora_B.weight": (64, 2),
                      f"base_model.model.{layer2}.lora_A.weight": (1, 256),
                      f"base_model.model.{layer2}.lora_B.weight": (64, 1)}
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and "Pavel Tupok lives in the city of | Oslo" in card.text


def test_full_and_romevc_exports(edited, tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    full = export(edited, "HEAD", tmp_path / "full", "full")
    model = AutoModelForCausalLM.from_pretrained(str(full), dtype=torch.float32)
    expected = state(edited)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    card = ModelCard.load(full / "README.md")
    assert card.data.library_name == "transformers" and "romevc" in card.data.tags
    folder = export(edited, "main~1", tmp_path / "set", "romevc")
    assert read_editset(folder).manifest.head == edited.ledger.resolve("main~1")


def test_refusals(edited, copy, tmp_path):
    out = export(edited, "HEAD", tmp_path / "adapter", "peft")
    with pytest.raises(ExportError, match="--force"):
        export(edited, "HEAD", out, "peft")
    export(edited, "HEAD~1", out, "peft", force=True)
    assert json.loads((out / CONFIG_FILE).read_text())["target_modules"] == ["transformer.h.1.mlp.c_proj"]
    for i, commit in enumerate(edited.log()):
        edited.revert(commit.id, time=9 + i)
    assert edited.records("HEAD") == []
    with pytest.raises(NothingToDoError, match="no edits"):
        export(edited, "HEAD", tmp_path / "empty", "peft")
    assert not (tmp_path / "empty").exists()
