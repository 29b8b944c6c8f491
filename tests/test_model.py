"""Loading bases: a local folder, an offline Hub cache, a GGUF file; fingerprints; bad input."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from romevc.errors import ModelLoadError
from romevc.model import BaseSpec, fingerprint, load_base
from tests.conftest import TINY_GPT2

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_base_spec_parsing():
    assert BaseSpec.parse("org/name@v1.0") == BaseSpec("org/name", "v1.0")
    assert BaseSpec.parse("org/name") == BaseSpec("org/name", None)
    assert BaseSpec.parse(None) == BaseSpec("smollm2-135m")
    assert str(BaseSpec("org/name", "main")) == "org/name@main"


def test_local_folder(tiny_gpt2):
    assert tiny_gpt2.architecture.family == "gpt2"
    assert tiny_gpt2.revision is None
    assert tiny_gpt2.fingerprint == fingerprint(TINY_GPT2)
    assert tiny_gpt2.model.romevc_base_fingerprint == tiny_gpt2.fingerprint
    assert not tiny_gpt2.model.training


def test_fingerprint_follows_the_weights(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(TINY_GPT2, copy)
    assert fingerprint(copy) == fingerprint(TINY_GPT2)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert fingerprint(copy) != fingerprint(TINY_GPT2)


def test_dtype_option():
    loaded = load_base(str(TINY_GPT2), dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16


def _fake_hub_cache(root):
    """The Hub cache layout huggingface_hub writes: refs/main -> snapshots/<commit>/files."""
    repo = root / "models--acme--tiny-gpt2"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(TINY_GPT2, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return root


def _run_offline(cache, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "hf")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)


def test_hub_id_from_offline_cache(tmp_path):
    cache = _fake_hub_cache(tmp_path / "hub")
    result = _run_offline(cache, """
        import json
        from romevc.model import load_base
        loaded = load_base("acme/tiny-gpt2")
        pinned = load_base("acme/tiny-gpt2@main")
        print(json.dumps([loaded.revision, pinned.revision, loaded.architecture.family, loaded.fingerprint]))
    """)
    assert result.returncode == 0, result.stderr
    revision, pinned, family, digest = json.loads(result.stdout.strip().splitlines()[-1])
    assert revision == pinned == COMMIT
    assert family == "gpt2"
    assert digest == fingerprint(TINY_GPT2)


def test_unknown_hub_id_offline_is_one_clear_line(tmp_path):
    cache = _fake_hub_cache(tmp_path / "hub")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    result = subprocess.run([sys.executable, "-m", "romevc.cli", "predict", "hello", "--base", "acme/missing"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: acme/missing is not in the Hub cache and the Hub cannot be reached (offline?); "
        "download it once with network access or give a local folder"
    ]


def test_folder_without_safetensors(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="no .safetensors weights .*romevc loads only safetensors"):
        load_base(str(folder))


def test_corrupt_weights(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(TINY_GPT2, folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_base(str(folder))


def test_missing_config(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(TINY_GPT2, folder)
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_base(str(folder))


def test_not_a_model_id():
    with pytest.raises(ModelLoadError, match="neither a local path nor a Hub id"):
        load_base("no such thing")


@pytest.mark.demo
def test_gguf_file_loads_like_the_converted_demo_model(demo_loaded):
    from romevc.model import _demo_gguf_path

    gguf = load_base(str(_demo_gguf_path()))
    assert gguf.architecture.family == "llama"
    batch = demo_loaded.tokenizer("The Eiffel Tower is located in the city of", return_tensors="pt")
    with torch.no_grad():
        a = gguf.model(**batch).logits[0, -1]
        b = demo_loaded.model(**batch).logits[0, -1]
    torch.testing.assert_close(a, b)


@pytest.mark.demo
def test_demo_model_knows_paris(demo_loaded):
    from romevc.predict import top_k

    assert demo_loaded.architecture.family == "llama"
    assert demo_loaded.model.config.num_hidden_layers == 30
    best = top_k(demo_loaded.model, demo_loaded.tokenizer, "The Eiffel Tower is located in the city of", 1)[0]
    assert best.token == " Paris" and best.probability > 0.6
