"""Causal tracing on the tiny models: grids, endpoints against direct runs, noise, files, averages, CLI."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from romevc.architectures import architecture_for, num_layers
from romevc.cli import cli
from romevc.trace import (KINDS, TraceError, TraceResult, TraceSettings, embedding_std, locate_subject,
                          module_name, trace, window_layers)
from romevc.trace_average import TOKEN_KINDS, average, read_records, token_kinds
from tests.conftest import TINY_GPT2
from tests.test_architectures import FAMILIES, tiny_model

PROMPT = "The home of Tomas Varek is the city of"  # the subject in the middle: tokens before it too
SUBJECT = "Tomas Varek"
FAST = TraceSettings(samples=3, window=2)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _main(output):
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def reference_p(model, tokenizer, result: TraceResult, settings: TraceSettings, restore=None) -> float:
    """p(answer) from full forward passes, written independently of romevc.trace's fast path:
    noise from a fresh generator added to the embeddings, and (kind, token, layer) restored by a
    hook with the state of a separate clean run."""
    arch = architecture_for(model)
    ids = torch.tensor([tokenizer(result.text)["input_ids"]])
    names, token = [], None
    if restore is not None:
        kind, token, layer = restore
        layers = [layer] if kind == "hidden" else window_layers(layer, num_layers(model), settings.window)
        names = [module_name(arch, kind, each) for each in layers]
    clean = {}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda _m, _i, out, name=name: clean.__setitem__(name, _main(out)[0, token].clone())) for name in names]
    model(input_ids=ids)
    for handle in handles:
        handle.remove()

    first, end = result.subject_range
    embeds = model.get_submodule(arch.embed)(ids)  # (1, seq, d)
    generator = torch.Generator().manual_seed(settings.seed)
    noise = torch.randn(settings.samples, end - first, embeds.shape[-1], generator=generator) * result.noise_std
    embeds = embeds.repeat(settings.samples, 1, 1)
    embeds[:, first:end] += noise

    def put_back(name):
        def hook(_module, _inputs, output):
            hidden = _main(output).clone()
            hidden[:, token] = clean[name]
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        return hook

    handles = [model.get_submodule(name).register_forward_hook(put_back(name)) for name in names]
    try:
        probs = model(inputs_embeds=embeds).logits[:, -1].float().softmax(-1)
    finally:
        for handle in handles:
            handle.remove()
    return float(probs[:, result.answer_id].mean())


@pytest.fixture(scope="module", params=FAMILIES)
def family_trace(request, one_thread):
    model, tokenizer = tiny_model(request.param)
    return model, tokenizer, trace(model, tokenizer, PROMPT, SUBJECT, settings=FAST)


@pytest.fixture(scope="module")
def gpt2_trace(tiny, one_thread):
    return trace(tiny.model, tiny.tokenizer, PROMPT, SUBJECT, settings=FAST)


# -- one trace ---------------------------------------------------------------------------------

def test_grids_are_tokens_by_layers(family_trace):
    model, tokenizer, result = family_trace
    shape = (len(tokenizer(PROMPT)["input_ids"]), num_layers(model))
    assert len(result.tokens) == shape[0]
    for kind in KINDS:
        assert tuple(result.grids[kind].shape) == shape
        assert torch.isfinite(result.grids[kind]).all() and (result.grids[kind] >= 0).all()


def test_endpoints_match_direct_runs(family_trace):
    """Corrupted p equals a separate run with the same seed; the last token's state after the
    last layer restores the clean p exactly, and no other token's state there changes anything."""
    model, tokenizer, result = family_trace
    assert result.p_corrupt == pytest.approx(reference_p(model, tokenizer, result, FAST), rel=1e-4, abs=1e-7)
    hidden = result.grids["hidden"]
    assert hidden[-1, -1].item() == pytest.approx(result.p_clean, rel=1e-4, abs=1e-7)
    assert torch.allclose(hidden[:-1, -1], torch.full_like(hidden[:-1, -1], result.p_corrupt), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("restore", [("hidden", 4, 1), ("mlp", 4, 1), ("attention", 3, 2), ("mlp", 6, 0)])
def test_restored_cells_match_full_forward_passes(family_trace, restore):
    model, tokenizer, result = family_trace
    kind, token, layer = restore
    expected = reference_p(model, tokenizer, result, FAST, restore)
    assert result.grids[kind][token, layer].item() == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_tokens_before_the_subject_are_not_corrupted(tiny, gpt2_trace):
    first, _ = gpt2_trace.subject_range
    assert first == 3  # "The home of"
    for kind in KINDS:
        assert (gpt2_trace.grids[kind][:first] == gpt2_trace.p_corrupt).all()
    # The shortcut agrees with actually restoring such a token.
    direct = reference_p(tiny.model, tiny.tokenizer, gpt2_trace, FAST, ("hidden", 1, 1))
    assert direct == pytest.approx(gpt2_trace.p_corrupt, rel=1e-5)


def test_tiny_gpt2_knows_the_fact_and_noise_hides_it(gpt2_trace):
    assert gpt2_trace.answer.strip() == "Vienna" and gpt2_trace.top_id == gpt2_trace.answer_id
    assert gpt2_trace.p_clean > 0.9 > gpt2_trace.p_corrupt
    assert [t.strip() for t in gpt2_trace.tokens[slice(*gpt2_trace.subject_range)]] == ["Tomas", "Varek"]


def test_noise_is_reproducible_with_a_seed(tiny, gpt2_trace):
    again = trace(tiny.model, tiny.tokenizer, PROMPT, SUBJECT, settings=FAST)
    for kind in KINDS:
        assert torch.equal(again.grids[kind], gpt2_trace.grids[kind])
    other = trace(tiny.model, tiny.tokenizer, PROMPT, SUBJECT, settings=TraceSettings(samples=3, window=2, seed=1))
    assert other.p_corrupt != gpt2_trace.p_corrupt


def test_batching_does_not_change_the_numbers(tiny, gpt2_trace):
    one_at_a_time = trace(tiny.model, tiny.tokenizer, PROMPT, SUBJECT,
                          settings=TraceSettings(samples=3, window=2, max_rows=3))
    for kind in KINDS:
        torch.testing.assert_close(one_at_a_time.grids[kind], gpt2_trace.grids[kind], rtol=1e-5, atol=1e-7)


def test_target_and_noise_scale(tiny):
    result = trace(tiny.model, tiny.tokenizer, "{} lives in the city of", SUBJECT, target="Lima", settings=FAST)
    assert result.answer.strip() == "Lima" and result.top_token.strip() == "Vienna"
    assert result.noise_std == pytest.approx(3 * tiny.model.transformer.wte.weight.std().item(), rel=1e-4)
    assert embedding_std(tiny.model) == pytest.approx(tiny.model.transformer.wte.weight.std().item(), rel=1e-5)


def test_no_hooks_are_left_behind(tiny, gpt2_trace):
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny.model.modules())


def test_window_layers_are_clipped_at_the_ends():
    assert window_layers(0, 30, 10) == list(range(0, 5))
    assert window_layers(15, 30, 10) == list(range(10, 20))
    assert window_layers(29, 30, 10) == list(range(24, 30))
    assert window_layers(2, 4, 1) == [2]


def test_locate_subject(tiny):
    tok = tiny.tokenizer
    assert locate_subject(tok, "Tomas Varek lives in the city of", SUBJECT).subject == (0, 2)
    assert locate_subject(tok, "{} lives in the city of", SUBJECT).subject == (0, 2)
    assert locate_subject(tok, PROMPT, SUBJECT).subject == (3, 5)
    with pytest.raises(TraceError, match="does not occur in the prompt"):
        locate_subject(tok, PROMPT, "Anna Berg")


def test_bad_settings_are_refused():
    with pytest.raises(TraceError, match="`samples`"):
        TraceSettings(samples=0)
    with pytest.raises(TraceError, match="`noise`"):
        TraceSettings(noise=float("nan"))


def test_save_writes_json_and_safetensors_that_agree(gpt2_trace, tmp_path):
    from safetensors.torch import load_file

    json_path, tensors_path = gpt2_trace.save(tmp_path)
    loaded = TraceResult.from_dict(json.loads(json_path.read_text()))
    tensors = load_file(tensors_path)
    for kind in KINDS:
        assert torch.equal(loaded.grids[kind], gpt2_trace.grids[kind])
        assert torch.equal(tensors[kind], gpt2_trace.grids[kind])
    assert loaded.subject_range == gpt2_trace.subject_range and loaded.p_clean == gpt2_trace.p_clean


def test_heatmaps_are_png_files(gpt2_trace, tmp_path):
    from romevc.trace_plot import plot_average, plot_trace

    written = plot_trace(gpt2_trace, tmp_path)
    assert sorted(p.name for p in written) == ["attention.png", "hidden.png", "mlp.png"]
    averaged = plot_average(average([gpt2_trace]), tmp_path / "average.png")
    for path in [*written, averaged]:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    import sys

    from romevc.trace_plot import require_matplotlib

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(TraceError, match=r"pip install romevc\[trace\]"):
        require_matplotlib()


# -- averages ----------------------------------------------------------------------------------

def test_token_kinds_on_a_hand_made_prompt():
    # tokens: 0 "The" | 1 "Eif" 2 "fel" 3 "Tower" (subject) | 4 "is" 5 "in" 6 "the" 7 "city"
    assert token_kinds(8, (1, 4)) == {
        "first subject token": [1], "middle subject tokens": [2], "last subject token": [3],
        "first subsequent token": [4], "further tokens": [5, 6], "last token": [7]}
    # A one-token subject is first and last; a subject at the end has no subsequent token.
    assert token_kinds(3, (2, 3)) == {
        "first subject token": [2], "middle subject tokens": [], "last subject token": [2],
        "first subsequent token": [], "further tokens": [], "last token": [2]}


def _hand_made(p_corrupt: float, n_tokens: int, subject: tuple[int, int], grid: torch.Tensor) -> TraceResult:
    return TraceResult(text="x", subject="s", tokens=["t"] * n_tokens, subject_range=subject, answer="a",
                       answer_id=0, top_id=0, top_token="a", p_clean=1.0, p_corrupt=p_corrupt, noise_std=1.0,
                       settings=TraceSettings(), grids={kind: grid for kind in KINDS})


def test_average_buckets_tokens_by_role():
    # Fact A: 7 tokens, subject 1..3; cell (t, l) = t / 10 + l / 100. Fact B: 3 tokens, subject [0, 1).
    grid_a = torch.tensor([[t / 10 + l / 100 for l in range(2)] for t in range(7)])
    grid_b = torch.tensor([[0.5, 0.7], [0.2, 0.2], [0.9, 1.0]])
    avg = average([_hand_made(0.0, 7, (1, 4), grid_a), _hand_made(0.1, 3, (0, 1), grid_b)])
    mlp = {role: avg.effects["mlp"][i] for i, role in enumerate(TOKEN_KINDS)}
    approx = lambda values: pytest.approx(values, abs=1e-6)  # noqa: E731
    assert mlp["first subject token"] == approx([(0.1 + 0.4) / 2, (0.11 + 0.6) / 2])
    assert mlp["middle subject tokens"] == approx([0.2, 0.21])  # only fact A has one
    assert mlp["last subject token"] == approx([(0.3 + 0.4) / 2, (0.31 + 0.6) / 2])
    assert mlp["first subsequent token"] == approx([(0.4 + 0.1) / 2, (0.41 + 0.1) / 2])
    assert mlp["further tokens"] == approx([0.5, 0.51])  # fact B has none: its token after the subject is its last
    assert mlp["last token"] == approx([(0.6 + 0.8) / 2, (0.61 + 0.9) / 2])
    assert avg.counts == {"first subject token": 2, "middle subject tokens": 1, "last subject token": 2,
                          "first subsequent token": 2, "further tokens": 1, "last token": 2}
    assert avg.suggest_layer() == (1, pytest.approx((0.31 + 0.6) / 2))


def test_a_role_no_fact_has_is_none_not_zero():
    avg = average([_hand_made(0.0, 2, (0, 1), torch.ones(2, 3))])
    assert avg.effects["hidden"][TOKEN_KINDS.index("middle subject tokens")] == [None, None, None]


# -- the command -------------------------------------------------------------------------------

BASE = ["--base", str(TINY_GPT2)]


def _counterfact(tmp_path, n: int = 3):
    """A CounterFact file in the simplified split format, made from the tiny GPT-2's own facts."""
    facts = json.loads((TINY_GPT2 / "facts.json").read_text())[:n]
    records = [{"case_id": i, "prompt": f["prompt"], "subject": f["subject"], "target_new": "Lima",
                "ground_truth": f["target"], "rephrase_prompt": f["paraphrases"][0],
                "locality_prompt": f["prompt"], "locality_ground_truth": f["target"]} for i, f in enumerate(facts)]
    path = tmp_path / "counterfact.json"
    path.write_text(json.dumps(records))
    return path


def _invoke(*args):
    return CliRunner().invoke(cli, ["trace", *args, *BASE, "--samples", "3"])


def test_cli_trace_json(tmp_path, one_thread):
    result = _invoke("Tomas Varek lives in the city of", "--subject", SUBJECT, "--out", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["answer"].strip() == "Vienna" and data["p_clean"] > data["p_corrupt"]
    assert len(data["grids"]["mlp"]) == len(data["tokens"]) and len(data["grids"]["mlp"][0]) == 4
    assert data["peaks"]["hidden"]["overall"]["p"] == pytest.approx(max(map(max, data["grids"]["hidden"])))
    names = sorted(p.split("/")[-1] for p in data["files"])
    assert names == ["attention.png", "hidden.png", "mlp.png", "trace.json", "trace.safetensors"]
    assert (tmp_path / "mlp.png").read_bytes()[:8] == PNG_MAGIC


def test_cli_subject_not_in_prompt_is_one_line(tmp_path):
    result = _invoke("Tomas Varek lives in the city of", "--subject", "Anna Berg", "--out", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: the subject 'Anna Berg' does not occur in the prompt 'Tomas Varek lives in the city of'; "
        "give it exactly as written there"]
    assert result.stdout == ""


def test_cli_average_suggests_a_layer_and_resumes(tmp_path, one_thread):
    data_file, out = _counterfact(tmp_path), tmp_path / "out"
    args = ["--average", str(data_file), "--n", "2", "--out", str(out), "--suggest-layer", "--window", "2", "--json"]
    first = _invoke(*args)
    assert first.exit_code == 0, first.output
    data = json.loads(first.stdout)
    assert data["n_facts"] == 2 and data["skipped"] == 0
    assert 0 <= data["suggested_layer"]["layer"] < 4
    assert len(data["effects"]["mlp"]) == len(TOKEN_KINDS) and len(data["effects"]["mlp"][0]) == 4
    assert (out / "average.png").read_bytes()[:8] == PNG_MAGIC
    assert json.loads((out / "average.json").read_text())["suggested_layer"] == data["suggested_layer"]
    records = out / "average-facts.jsonl"
    assert len(records.read_text().splitlines()) == 2

    # A run cut short mid-line: the torn line is ignored, the two facts are not traced again.
    with open(records, "a") as f:
        f.write('{"case_id": 2, "identity"')
    again = json.loads(_invoke(*args[:3], "3", *args[4:]).stdout)
    lines = records.read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[-1])["case_id"] == 2  # only case 2 traced, on a fresh line
    assert again["n_facts"] == 3
    text = _invoke(*args[:-1])
    assert text.exit_code == 0 and "suggested edit layer:" in text.stdout
    assert len(records.read_text().splitlines()) == 4


def test_cli_average_refuses_records_made_with_other_settings(tmp_path, one_thread):
    data_file, out = _counterfact(tmp_path, 1), tmp_path / "out"
    assert _invoke("--average", str(data_file), "--out", str(out), "--no-plot", "--window", "2").exit_code == 0
    result = _invoke("--average", str(data_file), "--out", str(out), "--no-plot", "--seed", "7")
    assert result.exit_code == 1 and "other settings" in result.stderr
    with pytest.raises(TraceError, match="choose another --out"):
        read_records(out / "average-facts.jsonl", {"settings": {}, "model": None})


def test_cli_usage_errors():
    assert _invoke("--suggest-layer").exit_code == 2  # no prompt, no --average
    assert _invoke("prompt", "--subject", "p", "--suggest-layer").exit_code == 2


def test_help_has_examples():
    result = CliRunner().invoke(cli, ["trace", "--help"])
    assert result.exit_code == 0 and result.output.count("Example:") == 2


def test_bfloat16_precision_stays_close_to_float32(tiny, gpt2_trace, one_thread):
    """bfloat16 autocast rounds only the matrix products' inputs: the grids stay within a few
    thousandths of float32, the endpoints too, and the setting is part of the trace's identity."""
    fast_bf16 = TraceSettings(samples=3, window=2, precision="bfloat16")
    result = trace(tiny.model, tiny.tokenizer, PROMPT, SUBJECT, settings=fast_bf16)
    assert result.p_clean == pytest.approx(gpt2_trace.p_clean, abs=5e-3)
    assert result.p_corrupt == pytest.approx(gpt2_trace.p_corrupt, abs=5e-3)
    for kind in KINDS:
        assert result.grids[kind].dtype == torch.float32
        torch.testing.assert_close(result.grids[kind], gpt2_trace.grids[kind], rtol=0, atol=1e-2)
    assert fast_bf16.identity()["precision"] == "bfloat16" and "precision" not in FAST.identity()
    assert next(tiny.model.parameters()).dtype == torch.float32  # the model itself is untouched
    with pytest.raises(TraceError, match="`precision`"):
        TraceSettings(precision="float16")


def test_known_only_average_reads_on_until_n_known_facts(tmp_path, one_thread):
    """--n with --known-only counts facts the model knows: unknown ones are read, skipped and not counted."""
    facts = json.loads((TINY_GPT2 / "facts.json").read_text())[:3]
    rows = []
    for i, f in enumerate(facts):
        rows.append({"case_id": 2 * i, "prompt": f["prompt"], "subject": f["subject"], "target_new": "Lima",
                     "ground_truth": "Lima", "rephrase_prompt": f["prompt"], "locality_prompt": f["prompt"],
                     "locality_ground_truth": f["target"]})  # the model does not answer "Lima": unknown
        rows.append({**rows[-1], "case_id": 2 * i + 1, "ground_truth": f["target"]})
    data_file, out = tmp_path / "cf.json", tmp_path / "out"
    data_file.write_text(json.dumps(rows))
    result = _invoke("--average", str(data_file), "--n", "2", "--known-only", "--out", str(out), "--no-plot",
                     "--window", "2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["n_facts"], data["skipped"]) == (2, 2)
    traced = [json.loads(line)["case_id"] for line in (out / "average-facts.jsonl").read_text().splitlines()]
    assert traced == [0, 1, 2, 3]  # stopped after the second known fact
