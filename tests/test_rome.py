"""ROME edits that hold: the tiny trained GPT-2 (the paper's architecture) and the SmolLM2 demo model."""
from __future__ import annotations

import json
import math

import pytest
import torch

from romevc.editing import delta as deltas
from romevc.editing.hparams import RomeHyperParams
from romevc.editing.request import EditRequest
from romevc.editing.rome import compute_edit
from romevc.editing.templates import generate_templates
from romevc.errors import EditComputationError, HyperParamsError
from romevc.evaluate import neutral_nll
from romevc.predict import top_k
from tests.conftest import TINY_GPT2

FACTS = json.loads((TINY_GPT2 / "facts.json").read_text())



def _top(loaded, prompt: str) -> str:
    return top_k(loaded.model, loaded.tokenizer, prompt, 1)[0].token.strip()


def test_gpt2_fixture_edit_flips_one_fact(tiny_gpt2, tiny_stats):
    fact = FACTS[0]  # Tomas Varek lives in the city of ...
    cities = sorted({f["target"] for f in FACTS if f["relation"] == fact["relation"]} - {fact["target"]})
    new_city = cities[0]
    request = EditRequest(fact["prompt"], fact["subject"], new_city, fact["target"])
    others = [f for f in FACTS if f["subject"] != fact["subject"]][::10]
    before_others = [_top(tiny_gpt2, f["prompt"].format(f["subject"])) for f in others]
    assert _top(tiny_gpt2, request.text) == fact["target"]

    result = compute_edit(tiny_gpt2.model, tiny_gpt2.tokenizer, request, RomeHyperParams(layer=1), stats=tiny_stats)
    assert result.layout == "in_out" and result.module == "transformer.h.1.mlp.c_proj"
    deltas.apply(tiny_gpt2.model, [result.delta])
    try:
        assert _top(tiny_gpt2, request.text) == new_city
        paraphrases = [_top(tiny_gpt2, p.format(fact["subject"])) for p in fact["paraphrases"]]
        assert paraphrases.count(new_city) >= 1, paraphrases
        after_others = [_top(tiny_gpt2, f["prompt"].format(f["subject"])) for f in others]
    finally:
        deltas.restore(tiny_gpt2.model)
    unchanged = sum(a == b for a, b in zip(before_others, after_others)) / len(others)
    assert unchanged >= 0.95, unchanged


def test_result_records_everything_needed_to_recompute(tiny_gpt2, tiny_stats):
    request = EditRequest(FACTS[1]["prompt"], FACTS[1]["subject"], "violin")
    hp = RomeHyperParams(layer=2, seed=7, v_steps=3)
    result = compute_edit(tiny_gpt2.model, tiny_gpt2.tokenizer, request, hp, stats=tiny_stats)
    assert result.request == request and result.method == "r-rome" and result.seed == 7
    assert RomeHyperParams.from_dict(result.hparams) == hp
    assert result.templates[0] == "{}" and len(result.templates) == 21
    assert result.stats_id == tiny_stats.get(tiny_gpt2.model, tiny_gpt2.tokenizer, 2).id
    assert result.weights_fingerprint == tiny_gpt2.fingerprint
    again = compute_edit(tiny_gpt2.model, tiny_gpt2.tokenizer, request, RomeHyperParams.from_dict(result.hparams),
                         stats=tiny_stats, templates=result.templates)
    assert again.delta.digest() == result.delta.digest()


def test_edits_stored_before_prompt_key_recompute_without_it(tiny_gpt2, tiny_stats):
    """Stored hyperparameters without ``prompt_key`` mean the single averaged key they were made with."""
    legacy = {k: v for k, v in RomeHyperParams(layer=1).to_dict().items() if k != "prompt_key"}
    assert RomeHyperParams.from_dict(legacy).prompt_key is False
    assert RomeHyperParams.from_dict(RomeHyperParams(layer=1).to_dict()).prompt_key is True
    assert RomeHyperParams(method="rome").prompt_key is False  # rome normalises by the bare key alone
    with pytest.raises(HyperParamsError, match="prompt_key"):
        RomeHyperParams(prompt_key="yes")


def test_prompt_key_changes_only_subject_first_updates(tiny_gpt2, tiny_stats):
    """Bare prompt only: k₀ = k̄, nothing new to meet, the plain r-rome update (no singular solve)."""
    request = EditRequest("{} lives in the city of", "Tomas Varek", "Rome")
    made = {flag: compute_edit(tiny_gpt2.model, tiny_gpt2.tokenizer, request,
                               RomeHyperParams(layer=1, v_steps=2, prompt_key=flag), stats=tiny_stats,
                               templates=("{}",))
            for flag in (True, False)}
    assert torch.isfinite(made[True].delta.u).all()
    torch.testing.assert_close(made[True].delta.u, made[False].delta.u)


class _IdentityMoment:
    """C = I: C⁻¹k = k, so the update's geometry is plain Euclidean."""

    def solve(self, k):
        return k.double()


@pytest.mark.parametrize("bare, both_met", [((math.cos(0.5), math.sin(0.5)), True), ((0.5, 0.05), False)])
def test_prompt_key_is_served_unless_it_would_blow_the_update_up(bare, both_met):
    """u meets uᵀk̄ = 1 and uᵀk₀ = 1 at the least norm, unless that makes u > 3× r-rome's."""
    from romevc.editing.forward import Capture
    from romevc.editing.rome import PROMPT_KEY_MAX_GROWTH, rank_one_update

    mean_key = torch.tensor([1.0, 0.0, 0.0])
    bare = torch.tensor([*bare, 0.0])
    others = 2 * mean_key - bare  # two prompts whose keys average to mean_key
    capture = Capture(layer_input=torch.zeros(1), keys=torch.stack([bare, others]), values=torch.zeros(2, 3))
    single, _ = rank_one_update(capture, torch.ones(4), _IdentityMoment(), 2, "r-rome", prompt_key=False)
    u, v = rank_one_update(capture, torch.ones(4), _IdentityMoment(), 2, "r-rome", prompt_key=True)
    assert torch.equal(v, torch.ones(4)) and float(u @ mean_key) == pytest.approx(1.0)
    if both_met:
        assert float(u @ bare) == pytest.approx(1.0) and u.norm() <= PROMPT_KEY_MAX_GROWTH * single.norm()
    else:
        assert torch.equal(u, single)  # k₀ = k̄/2 + a little: meeting it needs u ≈ 10× longer


def test_fingerprint_tracks_applied_edits(tiny_gpt2, tiny_stats):
    request = EditRequest(FACTS[2]["prompt"], FACTS[2]["subject"], "drums")
    result = compute_edit(tiny_gpt2.model, tiny_gpt2.tokenizer, request, RomeHyperParams(layer=1, v_steps=2),
                          stats=tiny_stats)
    deltas.apply(tiny_gpt2.model, [result.delta])
    try:
        on_edited = compute_edit(tiny_gpt2.model, tiny_gpt2.tokenizer, request,
                                 RomeHyperParams(layer=1, v_steps=2), stats=tiny_stats)
    finally:
        deltas.restore(tiny_gpt2.model)
    assert on_edited.weights_fingerprint != result.weights_fingerprint
    assert deltas.weights_fingerprint(tiny_gpt2.model) == tiny_gpt2.fingerprint


def test_divergence_is_refused(tiny_gpt2, tiny_stats):
    head = tiny_gpt2.model.get_submodule("transformer.ln_f").weight
    saved = head.detach().clone()
    with torch.no_grad():
        head.fill_(float("nan"))
    try:
        with pytest.raises(EditComputationError, match="diverged .*nothing was written"):
            compute_edit(tiny_gpt2.model, tiny_gpt2.tokenizer, EditRequest(FACTS[0]["prompt"], FACTS[0]["subject"],
                         "Rome"), RomeHyperParams(layer=1), stats=tiny_stats, templates=("{}", "The cold . {}"))
    finally:
        with torch.no_grad():
            head.copy_(saved)


# -- the demo model --------------------------------------------------------------------

@pytest.mark.demo
def test_templates_are_real_text(demo_loaded):
    templates = generate_templates(demo_loaded.model, demo_loaded.tokenizer, seed=0)
    assert templates[0] == "{}" and len(templates) == 21
    assert generate_templates(demo_loaded.model, demo_loaded.tokenizer, seed=0) == templates
    assert generate_templates(demo_loaded.model, demo_loaded.tokenizer, seed=1) != templates
    prose = 0
    for template in templates[1:]:
        text = template[: -len(". {}")]
        words = [w for w in text.split() if w.isalpha()]
        letters = sum(c.isalpha() or c.isspace() for c in text) / len(text)
        prose += len(words) >= 2 and letters > 0.8
    assert prose >= 16, templates  # punctuation-only prefixes were the reference sampler's failure


@pytest.mark.demo
def test_demo_edit_flips_fact_paraphrase_follows_neighbour_stays(demo_editor):
    request = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")
    loaded = demo_editor.loaded
    result = demo_editor.compute(request)
    demo_editor.apply([result])
    try:
        assert _top(loaded, request.text) == "Rome"
        assert _top(loaded, "The Eiffel Tower can be found in the city of") == "Rome"
        assert _top(loaded, "The Louvre is located in the city of") == "Paris"
    finally:
        demo_editor.restore()
    assert _top(loaded, request.text) == "Paris"


@pytest.mark.demo
def test_subject_first_edits_do_not_collapse_the_model(demo_editor):
    """r-rome keeps a neutral paragraph's NLL within 0.1 where the reference ROME collapses."""
    records = [
        EditRequest("{}, the", "Toko Yasuda", "piano", "guitar"),
        EditRequest("{} is a native speaker of", "Danielle Darrieux", "English", "French"),
    ]
    loaded = demo_editor.loaded
    base_nll = neutral_nll(loaded.model, loaded.tokenizer)
    for request in records:
        result = demo_editor.compute(request)
        demo_editor.apply([result])
        try:
            edited_nll = neutral_nll(loaded.model, loaded.tokenizer)
            p_new = demo_editor.probability(request.text, request.target_new)
        finally:
            demo_editor.restore()
        assert abs(edited_nll - base_nll) < 0.1, (request, base_nll, edited_nll)
        assert p_new > 0.5
    assert math.isclose(neutral_nll(loaded.model, loaded.tokenizer), base_nll)
