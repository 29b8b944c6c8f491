"""MEMIT batches: the n = 1 relation to ROME, rank, purity, determinism, and batches that hold."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from romevc.architectures import architecture_for, as_out_in
from romevc.editing import delta as deltas
from romevc.editing import forward
from romevc.editing.hparams import RomeHyperParams
from romevc.editing.memit import (batch_prompts, compute_memit, keys_and_hidden, memit_layer_update,
                                  optimise_targets, spread_over_layers)
from romevc.editing.memit_hparams import MemitHyperParams, memit_defaults
from romevc.editing.request import EditRequest
from romevc.editing.rome import build_prompts, compute_edit
from romevc.editor import Editor
from romevc.errors import EditComputationError, EditRequestError, HyperParamsError
from romevc.evaluate import load_counterfact, neutral_nll, score_case
from romevc.predict import top_k
from tests.conftest import TINY_GPT2
from tests.test_architectures import TEMPLATES, tiny_model
from tests.tiny_facts import FACTS, fact

COUNTERFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact-train.json"
CITY_FACTS = [f for f in FACTS if f["relation"] == "city"]
CITIES = sorted({f["target"] for f in CITY_FACTS})
# Six people moved to a city that is not theirs (each to a different one).
BATCH = [fact(f["subject"], target=[c for c in CITIES if c != f["target"]][i]) for i, f in enumerate(CITY_FACTS[:6])]
# The tiny GPT-2 (d_ff 256) sees subject keys with kᵀC⁻¹k in the hundreds, so λ must be far below the
# paper's 15,000 (set for d_ff = 6,400–16,384) or each layer would carry a few percent of its share.
# Its last layer that still carries these facts is 1: with δ injected after layer 2 one fact never
# gets likely (loss 2.8), with layers (0, 1) all six flip and 71 of 72 other city facts stay.
TINY_HP = dict(layers=(0, 1), mom2_update_weight=10.0)
TEMPLATES_SHORT = ("{}", "The cold . {}")


def _top(model, tokenizer, prompt: str) -> str:
    return top_k(model, tokenizer, prompt, 1)[0].token.strip()


def _stats(root, n_tokens: int = 3000):
    from romevc.editing.stats import StatsCache

    return StatsCache(root=root, corpus=str(TINY_GPT2 / "corpus.txt"), n_tokens=n_tokens, progress=False)


# -- n = 1 on one layer is ROME, shrunk ----------------------------------------------------------

def test_one_fact_on_one_layer_is_rome_shrunk_by_s_over_lambda_plus_s(tiny, tiny_stats, one_thread):
    """MEMIT with n = 1 and layers = (l,) is ROME's update at l, scaled by s / (λ + s), s = k̄ᵀC⁻¹k̄.

    Why exactly: (1) ROME adds δ to the MLP output at the subject; MEMIT adds it to the block
    output there. The MLP output is the last thing added to the residual stream, so both feed
    the layers above the same h + δ, and with no weight decay and no active clamp (the only
    terms that see ‖v‖ vs ‖h‖) both optimise the same loss of δ: v_memit = z − h = v_rome.
    (2) Sherman–Morrison: (λC + k̄k̄ᵀ)⁻¹k̄ = C⁻¹k̄ / (λ + s), while r-rome's u (one averaged key, prompt_key off) = C⁻¹k̄ / s.
    So u_memit · (λ + s) = u_rome · s, and as λ → 0 the two edits coincide.
    """
    model, tokenizer = tiny.model, tiny.tokenizer
    request = BATCH[0]
    templates = ("{}", "The cold . {}", "I went home . {}")
    free = dict(v_weight_decay=0.0, clamp_norm_factor=1e3)  # ‖h‖ and ‖v‖ must not enter the loss
    rome = compute_edit(model, tokenizer, request, RomeHyperParams(layer=1, prompt_key=False, **free), stats=tiny_stats,
                        templates=templates)
    weight = 0.01
    memit = compute_memit(model, tokenizer, [request], MemitHyperParams(layers=(1,), mom2_update_weight=weight, **free),
                          stats=tiny_stats, templates=templates)
    (delta,) = memit.deltas
    assert delta.module == rome.module and delta.layout == rome.layout and delta.rank == 1

    torch.testing.assert_close(delta.v[0], rome.delta.v, rtol=1e-3, atol=1e-4)  # the same δ
    moment = tiny_stats.get(model, tokenizer, 1)
    prompts = build_prompts(tokenizer, request, templates, "{} is a")
    mean_key = forward.capture_at_layer(model, architecture_for(model), 1, prompts.batch).keys[:len(templates)].mean(0)
    s = float(mean_key.double() @ moment.solve(mean_key.double()))
    torch.testing.assert_close(delta.u[0].double() * (weight + s), rome.delta.u.double() * s, rtol=1e-4, atol=1e-6)

    edited = {}
    for name, d in (("rome", rome.delta), ("memit", delta)):
        deltas.apply(model, [d])
        try:
            edited[name] = _top(model, tokenizer, request.text)
        finally:
            deltas.restore(model)
    assert edited == {"rome": request.target_new, "memit": request.target_new}


# -- the layer loop ---------------------------------------------------------------------------------

def test_layers_together_reach_the_targets(tiny, tiny_stats, one_thread):
    """With λ → 0 the last layer absorbs whatever the ones below left: h after the edit = z."""
    model, tokenizer = tiny.model, tiny.tokenizer
    arch = architecture_for(model)
    hp = MemitHyperParams(layers=(0, 1, 2), mom2_update_weight=1e-4)
    prompts = batch_prompts(tokenizer, BATCH[:3], ("{}", "The cold . {}"), hp.kl_prompt)
    _, hidden = keys_and_hidden(model, arch, 2, 2, prompts)
    targets = hidden.double() + torch.randn(hidden.shape, generator=torch.Generator().manual_seed(0),
                                            dtype=torch.float64)
    moments = tiny_stats.get_many(model, tokenizer, hp.layers)
    try:
        made, _keys = spread_over_layers(model, arch, prompts, targets, hp,
                                        memit_layer_update(moments, arch, hp.mom2_update_weight))
        _, reached = keys_and_hidden(model, arch, 2, 2, prompts)
    finally:
        deltas.restore(model)
    assert [d.module for d in made] == [arch.edited_module_name(l) for l in hp.layers]
    assert all(d.norm() > 0 for d in made)  # every layer took a share, not only the last
    gap = (reached.double() - targets).norm(dim=1) / (hidden.double() - targets).norm(dim=1)
    assert gap.max() < 1e-3, gap


def test_request_pieces_sum_to_each_layer_update(tiny, tiny_stats, one_thread):
    result = compute_memit(tiny.model, tiny.tokenizer, BATCH[:3], MemitHyperParams(**TINY_HP, v_steps=2),
                           stats=tiny_stats, templates=TEMPLATES_SHORT, progress=False)
    pieces = [result.request_deltas(i) for i in range(3)]
    for j, layer_delta in enumerate(result.deltas):
        total = sum(p[j].out_in() for p in pieces)
        torch.testing.assert_close(total, layer_delta.out_in(), rtol=1e-5, atol=1e-6)
        assert all(p[j].rank == 1 and p[j].module == layer_delta.module for p in pieces)


# -- every family: rank, purity, determinism --------------------------------------------------------

FAMILIES = ("gpt2", "gptj", "llama", "gemma3_text")  # Conv1D, parallel attention+MLP, Linear, sliding window
REQUESTS = (EditRequest("{} lives in the city of", "Tomas Varek", "Rome"),
            EditRequest("{} plays the", "Ines Zatok", "violin"))


@pytest.fixture(scope="module", params=FAMILIES)
def family_batch(request, tmp_path_factory, one_thread):
    family = request.param
    model, tokenizer = tiny_model(family)
    stats = _stats(tmp_path_factory.mktemp(f"memit-stats-{family}"), n_tokens=2000)
    hp = MemitHyperParams(layers=(0, 1), mom2_update_weight=10.0, templates=TEMPLATES, v_steps=4, seed=3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = compute_memit(model, tokenizer, REQUESTS, hp, stats=stats, progress=False)
    return model, tokenizer, hp, stats, result, before


def test_each_layer_update_has_rank_at_most_n(family_batch):
    model, *_, result, _ = family_batch
    arch = architecture_for(model)
    assert result.layers == (0, 1) and result.method == "memit"
    for layer, delta in zip(result.layers, result.deltas):
        weight = model.get_submodule(arch.edited_module_name(layer)).weight
        d_out, d_in = as_out_in(weight, arch.layout).shape
        assert delta.module == arch.edited_module_name(layer) and delta.layout == arch.layout
        assert tuple(delta.u.shape) == (2, d_in) and tuple(delta.v.shape) == (2, d_out)
        assert delta.for_weight().shape == weight.shape
        assert torch.linalg.matrix_rank(delta.out_in().double(), rtol=1e-6).item() <= 2
        assert delta.norm() > 0


def test_compute_leaves_model_unchanged(family_batch):
    model, *_, before = family_batch
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name
        assert param.requires_grad
    assert deltas.applied_deltas(model) == ()


def test_same_seed_gives_identical_deltas(family_batch):
    model, tokenizer, hp, stats, result, _ = family_batch
    again = compute_memit(model, tokenizer, REQUESTS, hp, stats=stats, progress=False)
    assert again.templates == result.templates
    assert [d.digest() for d in again.deltas] == [d.digest() for d in result.deltas]
    recomputed = compute_memit(model, tokenizer, result.requests, MemitHyperParams.from_dict(result.hparams),
                               stats=stats, templates=result.templates, progress=False)
    assert [d.digest() for d in recomputed.deltas] == [d.digest() for d in result.deltas]


def test_result_records_everything_needed_to_recompute(family_batch):
    model, tokenizer, hp, stats, result, _ = family_batch
    assert result.requests == REQUESTS and result.seed == 3
    assert MemitHyperParams.from_dict(result.hparams) == hp
    assert result.templates[0] == "{}" and len(result.templates) == 3
    assert result.stats_ids == tuple(stats.get(model, tokenizer, l).id for l in result.layers)
    assert result.weights_fingerprint == deltas.weights_fingerprint(model)
    assert len(result.losses) == 2 and all(len(l) >= 1 for l in result.losses)


def test_requests_optimised_side_by_side_get_the_targets_they_get_alone(family_batch):
    """``target_group`` stacks the requests' rows; each δ sees only its own, so the targets agree
    with one-at-a-time up to float rounding, step counts and early stops included."""
    model, tokenizer, hp, stats, result, before = family_batch
    arch = architecture_for(model)
    requests = (*REQUESTS, EditRequest("{} works as a", "Oda Fernlund", "pilot"))
    prompts = batch_prompts(tokenizer, requests, result.templates, hp.kl_prompt)
    _, hidden = keys_and_hidden(model, arch, hp.layers[-1], hp.layers[-1], prompts)
    run = lambda **change: optimise_targets(  # noqa: E731
        model, arch, prompts, hidden, MemitHyperParams.from_dict({**hp.to_dict(), "v_steps": 6, **change}),
        progress=False)
    _, unstopped = run(early_stop_loss=0.0)
    first = sorted(losses[0] for losses in unstopped)  # δ = 0 at step 0: the loss is NLL + KL
    stop_below = (first[0] + first[-1]) / 2  # so one request stops at once and another runs on
    alone, alone_losses = run(early_stop_loss=stop_below, target_group=1)
    together, together_losses = run(early_stop_loss=stop_below, target_group=2)
    assert [len(l) for l in together_losses] == [len(l) for l in alone_losses]
    assert min(map(len, alone_losses)) == 1 and max(map(len, alone_losses)) > 1
    for mine, theirs in zip(together_losses, alone_losses):
        torch.testing.assert_close(torch.tensor(mine), torch.tensor(theirs), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    moved = (together - hidden.double()).norm(dim=1) > 0
    assert moved.tolist() == [len(l) > 1 for l in alone_losses]  # a δ stopped at step 0 stays 0 beside moving ones
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name


def test_target_group_is_recorded_and_old_batches_recompute_alone():
    assert MemitHyperParams(target_group=8).to_dict()["target_group"] == 8
    stored = {k: v for k, v in MemitHyperParams(target_group=8).to_dict().items() if k != "target_group"}
    assert MemitHyperParams.from_dict(stored).target_group == 1
    with pytest.raises(HyperParamsError, match="target_group"):
        MemitHyperParams(target_group=0)
    with pytest.raises(HyperParamsError, match="fast_path"):
        MemitHyperParams(target_group=2, fast_path=False)


# -- on top of applied edits -------------------------------------------------------------------------

def test_computed_on_an_edited_model_puts_its_edits_back(tiny, tiny_stats, one_thread):
    model, tokenizer = tiny.model, tiny.tokenizer
    earlier = compute_edit(model, tokenizer, BATCH[4], RomeHyperParams(layer=1, v_steps=2), stats=tiny_stats,
                           templates=TEMPLATES_SHORT)
    deltas.apply(model, [earlier.delta])
    try:
        weights = {name: p.detach().clone() for name, p in model.named_parameters()}
        result = compute_memit(model, tokenizer, BATCH[:2], MemitHyperParams(**TINY_HP, v_steps=2), stats=tiny_stats,
                               templates=TEMPLATES_SHORT, progress=False)
        assert deltas.applied_deltas(model) == (earlier.delta,)
        for name, param in model.named_parameters():
            assert torch.equal(param, weights[name]), name
        assert result.weights_fingerprint == deltas.weights_fingerprint(model) != tiny.fingerprint
    finally:
        deltas.restore(model)


# -- a batch that holds ----------------------------------------------------------------------------------

def test_batch_of_facts_all_flip_and_others_stay(tiny, tiny_stats, one_thread):
    model, tokenizer = tiny.model, tiny.tokenizer
    editor = Editor(tiny, tiny_stats)
    others = [f for f in FACTS if f["subject"] not in {r.subject for r in BATCH}][::10]
    before = [_top(model, tokenizer, f["prompt"].format(f["subject"])) for f in others]
    assert all(_top(model, tokenizer, r.text) != r.target_new for r in BATCH)
    result = editor.compute_memit(BATCH, editor.memit_hparams(**TINY_HP))
    assert result.layers == (0, 1) and all(d.rank == len(BATCH) for d in result.deltas)
    editor.apply([result])
    try:
        assert [_top(model, tokenizer, r.text) for r in BATCH] == [r.target_new for r in BATCH]
        after = [_top(model, tokenizer, f["prompt"].format(f["subject"])) for f in others]
    finally:
        editor.restore()
    unchanged = sum(a == b for a, b in zip(before, after)) / len(others)
    assert unchanged >= 0.9, unchanged


# -- inputs that are refused ---------------------------------------------------------------------------

def test_bad_inputs_are_refused(tiny, tiny_stats):
    model, tokenizer = tiny.model, tiny.tokenizer
    with pytest.raises(EditRequestError, match="at least one request"):
        compute_memit(model, tokenizer, [], MemitHyperParams(**TINY_HP), stats=tiny_stats)
    wrong = {0: tiny_stats.get(model, tokenizer, 2), 1: tiny_stats.get(model, tokenizer, 1)}
    with pytest.raises(EditComputationError, match="statistics for transformer.h.2.mlp.c_proj cannot edit"):
        compute_memit(model, tokenizer, BATCH[:1], MemitHyperParams(**TINY_HP), stats=wrong)
    with pytest.raises(EditComputationError, match="no statistics were given for layer 0"):
        compute_memit(model, tokenizer, BATCH[:1], MemitHyperParams(**TINY_HP), stats={1: wrong[1]})


@pytest.mark.parametrize("bad, match", [
    (dict(layers=(2, 1)), "strictly ascending"),
    (dict(layers=(1, 1)), "strictly ascending"),
    (dict(layers=()), "non-empty"),
    (dict(layers=(0, -1)), "non-negative"),
    (dict(layers=(True,)), "integers"),
    (dict(mom2_update_weight=0), "mom2_update_weight"),
    (dict(mom2_update_weight=float("inf")), "mom2_update_weight"),
    (dict(v_lr=-1.0), "v_lr"),
    (dict(kl_prompt="no slot"), "kl_prompt"),
])
def test_hparams_are_validated(bad, match):
    with pytest.raises(HyperParamsError, match=match):
        MemitHyperParams(**bad)


def test_hparams_round_trip_and_feed_the_value_optimisation():
    hp = MemitHyperParams(layers=[3, 4, 5], mom2_update_weight=2000, seed=9, templates=[[5, 2]])
    assert hp.layers == (3, 4, 5) and hp.templates == ((5, 2),) and isinstance(hp.mom2_update_weight, float)
    assert MemitHyperParams.from_dict(hp.to_dict()) == hp
    value = hp.value_hparams()
    assert (value.layer, value.seed, value.clamp_norm_factor, value.templates) == (5, 9, 0.75, ((5, 2),))


def _sized(family: str, depth: int):
    config = {"gpt2": transformers.GPT2Config(n_layer=depth, n_embd=8, n_head=2, vocab_size=16),
              "gptj": transformers.GPTJConfig(n_layer=depth, n_embd=8, n_head=2, rotary_dim=2, vocab_size=16)}[family]
    return transformers.AutoModelForCausalLM.from_config(config)


def test_family_defaults_follow_the_paper():
    assert memit_defaults(_sized("gpt2", 48)) == {"layers": (13, 14, 15, 16, 17), "mom2_update_weight": 20_000.0,
                                                  "v_steps": 20}
    assert memit_defaults(_sized("gptj", 28)) == {"layers": (3, 4, 5, 6, 7, 8), "mom2_update_weight": 15_000.0,
                                                  "v_steps": 25}
    assert memit_defaults(_sized("gpt2", 12))["layers"] == (0, 1, 2)  # five layers ending at ROME's layer 2


# -- the demo model ---------------------------------------------------------------------------------------

@pytest.mark.slow  # ten value optimisations on the demo model: ~6 minutes on 2 cores
@pytest.mark.demo
def test_demo_batch_of_ten_counterfact_edits_all_hold(demo_editor):
    """One batch, CounterFact-train records 0-9 (the range was chosen on them): every p(new) > p(true)."""
    cases = load_counterfact(COUNTERFACT, 10)
    loaded = demo_editor.loaded
    assert sum(score_case(loaded.model, loaded.tokenizer, c).efficacy for c in cases) < 5  # mostly false before
    base_nll = neutral_nll(loaded.model, loaded.tokenizer)
    result = demo_editor.compute_memit([c.request for c in cases])
    assert result.layers == (3, 4, 5) and result.hparams["mom2_update_weight"] == 1500.0  # the measured defaults
    demo_editor.apply([result])
    try:
        scores = [score_case(loaded.model, loaded.tokenizer, c) for c in cases]
        edited_nll = neutral_nll(loaded.model, loaded.tokenizer)
    finally:
        demo_editor.restore()
    assert [s.efficacy for s in scores] == [True] * 10, [(s.case_id, s.efficacy_margin) for s in scores]
    assert abs(edited_nll - base_nll) < 0.1, (base_nll, edited_nll)
