"""Second-moment statistics: equal to a direct computation, cached, keyed by what changes them."""
from __future__ import annotations

import json

import pytest
import torch

from romevc.corpus import open_corpus
from romevc.editing import stats as stats_module
from romevc.editing.stats import StatsCache, compute_second_moments
from romevc.errors import CorpusError, LayerOutOfRangeError
from tests.conftest import TINY_GPT2

TEXT = (
    "Tomas Varek lives in the city of Vienna . The weather was cold .\n\n"
    "Nina Kipes works as a chef . Oskar Vumem found the window early .\n\n"
    "Emil Sedit painted a old window . Tomas Varek is a person ."
)


def direct_second_moment(model, tokenizer, layer: int, texts: list[str]) -> torch.Tensor:
    """K.T @ K / n over every token of every text, one text per forward pass, no padding."""
    module = model.get_submodule(f"transformer.h.{layer}.mlp.c_proj")
    keys = []
    handle = module.register_forward_pre_hook(lambda _m, inputs: keys.append(inputs[0][0].double()))
    with torch.no_grad():
        for text in texts:
            model(**tokenizer(text, return_tensors="pt"))
    handle.remove()
    k = torch.cat(keys)  # (n, d_ff)
    return k.T @ k / k.shape[0]


def test_matches_direct_computation(tiny_gpt2, tmp_path):
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text(TEXT)
    corpus = open_corpus(str(corpus_file))
    moments = compute_second_moments(tiny_gpt2.model, tiny_gpt2.tokenizer, [1, 3], corpus, n_tokens=10_000,
                                     progress=False)
    texts = TEXT.split("\n\n")
    for layer in (1, 3):
        expected = direct_second_moment(tiny_gpt2.model, tiny_gpt2.tokenizer, layer, texts)
        got = moments[layer].mom2
        assert moments[layer].count == sum(len(tiny_gpt2.tokenizer(t)["input_ids"]) for t in texts)
        assert ((got - expected).norm() / expected.norm()).item() < 1e-5


def test_one_pass_equals_separate_passes(tiny_gpt2, tmp_path):
    corpus = open_corpus(str(TINY_GPT2 / "corpus.txt"))
    both = compute_second_moments(tiny_gpt2.model, tiny_gpt2.tokenizer, [0, 2], corpus, 2000, progress=False)
    alone = compute_second_moments(tiny_gpt2.model, tiny_gpt2.tokenizer, [2], corpus, 2000, progress=False)
    assert torch.allclose(both[2].mom2, alone[2].mom2, rtol=1e-6, atol=1e-9)


def test_second_call_hits_the_cache(tiny_gpt2, tmp_path, monkeypatch):
    cache = StatsCache(root=tmp_path, corpus=str(TINY_GPT2 / "corpus.txt"), n_tokens=1000, progress=False)
    first = cache.get(tiny_gpt2.model, tiny_gpt2.tokenizer, 1)
    assert cache.path(first.key).exists()

    def fail(*args, **kwargs):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(stats_module, "compute_second_moments", fail)
    fresh = StatsCache(root=tmp_path, corpus=str(TINY_GPT2 / "corpus.txt"), n_tokens=1000, progress=False)
    again = fresh.get(tiny_gpt2.model, tiny_gpt2.tokenizer, 1)
    assert again.id == first.id and torch.equal(again.mom2, first.mom2)


def test_key_names_every_input(tiny_gpt2, tmp_path):
    a = StatsCache(root=tmp_path, corpus=str(TINY_GPT2 / "corpus.txt"), n_tokens=1000)
    b = StatsCache(root=tmp_path, corpus=str(TINY_GPT2 / "corpus.txt"), n_tokens=2000)
    c = StatsCache(root=tmp_path, n_tokens=1000)  # the default corpus
    ids = {cache.key(tiny_gpt2.model, layer).id for cache in (a, b, c) for layer in (1, 2)}
    assert len(ids) == 6


def test_corrupt_cache_file_is_recomputed(tiny_gpt2, tmp_path):
    cache = StatsCache(root=tmp_path, corpus=str(TINY_GPT2 / "corpus.txt"), n_tokens=500, progress=False)
    first = cache.get(tiny_gpt2.model, tiny_gpt2.tokenizer, 0)
    path = cache.path(first.key)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    fresh = StatsCache(root=tmp_path, corpus=str(TINY_GPT2 / "corpus.txt"), n_tokens=500, progress=False)
    assert torch.allclose(fresh.get(tiny_gpt2.model, tiny_gpt2.tokenizer, 0).mom2, first.mom2)
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written file left behind


def test_solve_matches_linear_solve(tiny_gpt2, tiny_stats):
    moment = tiny_stats.get(tiny_gpt2.model, tiny_gpt2.tokenizer, 1)
    k = torch.randn(moment.mom2.shape[0], dtype=torch.float64)
    assert torch.allclose(moment.solve(k), torch.linalg.solve(moment.mom2, k), rtol=1e-6, atol=1e-8)


def test_corpus_formats(tmp_path):
    (tmp_path / "a.txt").write_text("First paragraph.\n\nSecond paragraph.")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.txt").write_text("One.")
    (folder / "y.txt").write_text("Two.")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}) for t in ["Alpha text.", "Beta text."]))
    assert list(open_corpus(str(tmp_path / "a.txt")).documents()) == ["First paragraph.", "Second paragraph."]
    assert list(open_corpus(str(folder)).documents()) == ["One.", "Two."]
    assert list(open_corpus(str(jsonl)).documents()) == ["Alpha text.", "Beta text."]
    default = open_corpus(None)
    assert default.id == "python-docs-prose-v1"
    assert sum(len(d.split()) for d in default.documents()) > 250_000


def test_corpus_id_follows_content(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("Some text.")
    first = open_corpus(str(path)).id
    path.write_text("Other text.")
    assert open_corpus(str(path)).id != first


@pytest.mark.parametrize("content, message", [
    ("", "yielded no text"),
    ("   \n\n  ", "yielded no text"),
])
def test_empty_corpus_is_refused(tiny_gpt2, tmp_path, content, message):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    cache = StatsCache(root=tmp_path / "s", corpus=str(path), n_tokens=100, progress=False)
    with pytest.raises(CorpusError, match=message):
        cache.get(tiny_gpt2.model, tiny_gpt2.tokenizer, 0)
    assert not list((tmp_path / "s").glob("*")) if (tmp_path / "s").exists() else True


def test_bad_corpus_inputs(tmp_path):
    with pytest.raises(CorpusError, match="no corpus at"):
        open_corpus(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(CorpusError, match="bad.jsonl:2: not JSON"):
        list(open_corpus(str(bad)).documents())
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="holds no .txt files"):
        open_corpus(str(tmp_path / "empty"))


def test_layer_out_of_range(tiny_gpt2, tiny_stats):
    with pytest.raises(LayerOutOfRangeError, match=r"layer 9 is out of range: this model has layers 0\.\.3"):
        tiny_stats.get(tiny_gpt2.model, tiny_gpt2.tokenizer, 9)
