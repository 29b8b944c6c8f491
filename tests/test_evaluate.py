"""Evaluation metrics on hand-made cases whose probabilities are known, and `romevc eval` end to end."""
from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from romevc.cli import cli
from romevc.editing.request import EditRequest
from romevc.evaluate import (CaseScores, CounterFactCase, load_dataset, render_report, score_case, summarise,
                             token_accuracy)
from tests.conftest import TINY_GPT2


class FixedModel(torch.nn.Module):
    """A 'model' whose next-token distribution is fixed: p(token) = probs[token] at every position."""

    def __init__(self, probs: list[float]):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(probs).log())

    def forward(self, input_ids, attention_mask=None, use_cache=False, **_):
        batch, seq = input_ids.shape
        return type("Out", (), {"logits": self.logits.expand(batch, seq, -1)})()


class CharTokenizer:
    """One token per word over a tiny vocabulary."""

    vocab = {"a": 0, "b": 1, "c": 2, "x": 3}
    pad_token_id = 3

    def __call__(self, text, add_special_tokens=True, **_):
        return {"input_ids": [self.vocab[w] for w in text.split()]}


def test_counterfact_scores_follow_the_probabilities():
    model, tok = FixedModel([0.5, 0.3, 0.1, 0.1]), CharTokenizer()
    case = CounterFactCase(1, EditRequest("x {}", "x", "a", "b"), ("x x",), (("x", "c"),))
    scores = score_case(model, tok, case)
    assert scores.efficacy is True  # p(a) = 0.5 > p(b) = 0.3
    assert scores.paraphrase == 1.0
    assert scores.neighbourhood == 0.0  # p(c) = 0.1 < p(a) = 0.5
    assert math.isclose(scores.efficacy_margin, 0.2, rel_tol=1e-5)
    assert math.isclose(scores.neighbourhood_margin, -0.4, rel_tol=1e-5)


def test_summary_percentages_and_harmonic_mean():
    scores = [CaseScores(i, e, p, n, 0.1, 0.2, 0.3) for i, (e, p, n) in
              enumerate([(True, 1.0, 0.5), (True, 0.0, 1.0), (False, 1.0, 0.0), (True, 1.0, 0.5)])]
    s = summarise(scores)
    assert (s.ES, s.PS, s.NS) == (75.0, 75.0, 50.0)
    assert math.isclose(s.S, 3 / (1 / 75 + 1 / 75 + 1 / 50))
    assert math.isclose(s.EM, 10.0)


def test_token_accuracy_is_teacher_forced_top1():
    model, tok = FixedModel([0.1, 0.6, 0.2, 0.1]), CharTokenizer()
    assert token_accuracy(model, tok, "x", "b b") == 1.0
    assert token_accuracy(model, tok, "x", "b c") == 0.5


def test_dataset_formats(tmp_path):
    original = [{"case_id": 7, "requested_rewrite": {"prompt": "{} plays the", "subject": "Toko Yasuda",
                 "target_new": {"str": "piano"}, "target_true": {"str": "guitar"}},
                 "paraphrase_prompts": ["Toko Yasuda is good at the"],
                 "neighborhood_prompts": ["John Lennon plays the", "Jimi Hendrix plays the"]}]
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(original))
    case = load_dataset(path)[0]
    assert case.request.target_new == "piano" and case.neighbours[1] == ("Jimi Hendrix plays the", "guitar")
    zsre = load_dataset(_zsre_sample(tmp_path))
    assert zsre[0].request.prompt == "What is the product made by {}?"


def _zsre_sample(tmp_path):
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps([{"subject": "UniFirst", "src": "What is the product made by UniFirst?",
                                 "alt": "aircraft", "answers": ["uniform"], "rephrase": "What does UniFirst make?",
                                 "loc": "nq question: who wrote hamlet", "loc_ans": "Shakespeare"}]))
    return path


def _counterfact_file(tmp_path, facts):
    records = [{"case_id": i, "prompt": f["prompt"], "subject": f["subject"], "target_new": "Lima",
                "ground_truth": f["target"], "rephrase_prompt": f["paraphrases"][0].format(f["subject"]),
                "locality_prompt": facts[(i + 1) % 3]["prompt"].format(facts[(i + 1) % 3]["subject"]),
                "locality_ground_truth": facts[(i + 1) % 3]["target"]} for i, f in enumerate(facts)]
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(records))
    return path


def test_eval_command_on_the_tiny_model(tmp_path):
    facts = json.loads((TINY_GPT2 / "facts.json").read_text())[:3]
    path = _counterfact_file(tmp_path, facts)
    result = CliRunner().invoke(cli, ["eval", str(path), "--n", "3", "--method", "r-rome", "--layer", "1",
                                      "--tokens", "2000", "--base", str(TINY_GPT2), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["unedited"]["ES"] == 0.0 and report["unedited"]["NS"] == 100.0
    run = report["runs"][0]
    assert run["summary"]["ES"] == 100.0 and run["summary"]["NS"] >= 66.0
    text = CliRunner().invoke(cli, ["eval", str(path), "--n", "1", "--method", "r-rome", "--layer", "1",
                                    "--tokens", "2000", "--base", str(TINY_GPT2)])
    assert "counterfact: 1 records" in text.stdout and "unedited" in text.stdout


def test_sequential_checkpoints_and_records_on_the_tiny_model(tmp_path):
    """Sequential runs score the cases edited so far at each checkpoint and report every edit as it happens."""
    from romevc.editing.stats import StatsCache
    from romevc.editor import Editor
    from romevc.evaluate import run_evaluation
    from romevc.model import load_base

    facts = json.loads((TINY_GPT2 / "facts.json").read_text())[:3]
    cases = load_dataset(_counterfact_file(tmp_path, facts), 3)
    editor = Editor(load_base(str(TINY_GPT2)), StatsCache(n_tokens=2000, root=tmp_path / "stats"))
    records: list[dict] = []
    report = run_evaluation(editor, cases, ["r-rome"], [1], sequential=True, checkpoints=[1, 2],
                            on_record=records.append, progress=False)
    run = report["runs"][0]
    # a different set of cases does not take another run's unedited scores
    other = run_evaluation(editor, cases[:2], ["r-rome"], [1], sequential=True, progress=False, done=records)
    assert other["unedited"]["n"] == 2
    assert [p["edits"] for p in run["checkpoints"]] == [1, 2]
    assert [p["summary"]["n"] for p in run["checkpoints"]] == [1, 2]
    assert [r["kind"] for r in records] == ["unedited", "edit", "checkpoint", "edit", "checkpoint", "edit"]
    assert [r["index"] for r in records if r["kind"] == "edit"] == [0, 1, 2]
    json.dumps(records)  # every record is JSON-able as it is written
    # fluency after 1, 2 and all edits, and before any: texts from the same prefixes every time
    entropies = [p["generation_entropy"] for p in run["checkpoints"]] + [run["generation_entropy"],
                                                                         report["unedited_generation_entropy"]]
    assert all(0 < e < 20 for e in entropies), entropies
    assert "GE20" in render_report(report).splitlines()[1]


def test_sequence_ge_prompts_prefer_generation_prompts():
    """A sequential run's fluency prefixes: each of the first 20 cases' generation prompt, else its edit prompt."""
    from romevc.evaluate import sequence_ge_prompts

    def case(i, generation=()):
        return CounterFactCase(i, EditRequest(f"{{}} number {i} is in", f"S{i}", "Rome"), (), (), generation)

    cases = [case(0, ("Some text about S0",)), *(case(i) for i in range(1, 30))]
    prompts = sequence_ge_prompts(cases)
    assert len(prompts) == 20
    assert prompts[0] == "Some text about S0" and prompts[1] == "S1 number 1 is in"


def test_one_at_a_time_run_resumes_from_its_records(tmp_path):
    """Edit records of an earlier run are reused, not recomputed, and give the same summary."""
    from romevc.editing.stats import StatsCache
    from romevc.editor import Editor
    from romevc.evaluate import run_evaluation
    from romevc.model import load_base

    facts = json.loads((TINY_GPT2 / "facts.json").read_text())[:3]
    cases = load_dataset(_counterfact_file(tmp_path, facts), 3)
    editor = Editor(load_base(str(TINY_GPT2)), StatsCache(n_tokens=2000, root=tmp_path / "stats"))
    first: list[dict] = []
    full = run_evaluation(editor, cases, ["r-rome"], [1], on_record=first.append, progress=False)
    computed = []
    editor.compute = lambda request, hparams: computed.append(request) or Editor.compute(editor, request, hparams)
    again: list[dict] = []
    assert first[0]["kind"] == "unedited"
    resumed = run_evaluation(editor, cases, ["r-rome"], [1], on_record=again.append, progress=False, done=first[:3])
    assert [r.subject for r in computed] == [cases[2].request.subject]
    assert [r["index"] for r in again] == [2]  # the unedited scores were reused too: no record for them
    assert resumed["runs"][0]["summary"] == full["runs"][0]["summary"]
    assert resumed["unedited"] == full["unedited"] and resumed["unedited_neutral_nll"] == full["unedited_neutral_nll"]


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_sequential_run_resumes_by_replaying_stored_deltas(tmp_path, cut):
    """A sequential run cut after ``cut`` edits goes on from its records to the uninterrupted result."""
    from romevc.editing.stats import StatsCache
    from romevc.editor import Editor
    from romevc.evaluate import delta_from_record, run_evaluation
    from romevc.model import load_base

    facts = json.loads((TINY_GPT2 / "facts.json").read_text())[:4]
    cases = load_dataset(_counterfact_file(tmp_path, facts), 4)
    editor = Editor(load_base(str(TINY_GPT2)), StatsCache(n_tokens=2000, root=tmp_path / "stats"))
    first: list[dict] = []
    full = run_evaluation(editor, cases, ["r-rome"], [1], sequential=True, checkpoints=[2],
                          on_record=first.append, progress=False)
    kept = [r for r in first if r["kind"] != "edit" or r["index"] < cut]
    kept = [r for r in kept if r["kind"] != "checkpoint" or r["edits"] <= cut]
    computed = []
    editor.compute = lambda request, hparams: computed.append(request) or Editor.compute(editor, request, hparams)
    again: list[dict] = []
    resumed = run_evaluation(editor, cases, ["r-rome"], [1], sequential=True, checkpoints=[2],
                             on_record=again.append, progress=False, done=kept)
    assert [r.subject for r in computed] == [c.request.subject for c in cases[cut:]]
    assert [r["index"] for r in again if r["kind"] == "edit"] == list(range(cut, 4))
    assert [r["edits"] for r in again if r["kind"] == "checkpoint"] == ([2] if cut < 2 else [])
    for before, after in zip([r for r in first if r["kind"] == "edit"][cut:], [r for r in again if r["kind"] == "edit"]):
        assert before["delta"] == after["delta"]  # computed on bit-identical weights
    assert resumed["runs"][0]["summary"] == full["runs"][0]["summary"]
    assert resumed["runs"][0]["checkpoints"] == full["runs"][0]["checkpoints"]
    assert resumed["unedited_generation_entropy"] == full["unedited_generation_entropy"]
    delta = delta_from_record(first[1]["delta"])
    assert delta.u.dtype == torch.float32 and delta.module == "transformer.h.1.mlp.c_proj"


# -- MEMIT batches ---------------------------------------------------------------------------------

def _memit_file(tmp_path):
    """Three city facts of three different subjects, each moved to another city.

    MEMIT keys a fact by its subject, so a batch needs distinct subjects: three facts of one
    subject (as in ``_counterfact_file``) share a key and can only be moved together.
    """
    facts = [f for f in json.loads((TINY_GPT2 / "facts.json").read_text()) if f["relation"] == "city"]
    new = ["Paris", "Rome", "Lima"]
    neighbours = [f for f in facts[3:] if f["target"] not in new][:3]
    records = [{"case_id": i, "prompt": f["prompt"], "subject": f["subject"], "target_new": new[i],
                "ground_truth": f["target"], "rephrase_prompt": f["paraphrases"][0].format(f["subject"]),
                "locality_prompt": neighbours[i]["prompt"].format(neighbours[i]["subject"]),
                "locality_ground_truth": neighbours[i]["target"]} for i, f in enumerate(facts[:3])]
    assert all(r["ground_truth"] != r["target_new"] for r in records)
    path = tmp_path / "cf-memit.json"
    path.write_text(json.dumps(records))
    return path


def test_memit_eval_command_one_batch_and_batches_of_two(tmp_path):
    path = _memit_file(tmp_path)
    reports = {}
    for extra in ([], ["--batch-size", "2"]):
        result = CliRunner().invoke(cli, ["eval", str(path), "--n", "3", "--method", "memit", "--tokens", "2000",
                                          "--base", str(TINY_GPT2), "--json", *extra])
        assert result.exit_code == 0, result.output
        reports[tuple(extra)] = json.loads(result.stdout)
    for size, report in zip((3, 2), reports.values()):
        assert report["batch_size"] == size and report["unedited"]["ES"] == 0.0
        (run,) = report["runs"]
        assert run["method"] == "memit" and run["layer"] == "0-1" and run["layers"] == [0, 1]
        assert run["batch_size"] == size and run["summary"]["n"] == 3
        assert run["summary"]["ES"] >= 66.0 and run["seconds_per_edit"] > 0 and run["mean_delta_norm"] > 0
        assert "GE" not in run["summary"]  # the simplified format has no generation prompts
    text = CliRunner().invoke(cli, ["eval", str(path), "--n", "3", "--method", "memit", "--batch-size", "2",
                                    "--tokens", "2000", "--base", str(TINY_GPT2)])
    assert text.exit_code == 0, text.output
    assert "batches of 2" in text.stdout and "memit       0-1" in text.stdout
    refused = CliRunner().invoke(cli, ["eval", str(path), "--method", "rome", "--batch-size", "2"])
    assert refused.exit_code == 2 and "--batch-size needs --method memit" in refused.output


def test_memit_batches_are_independent_unless_sequential(tmp_path):
    """Batches of 2 over 3 cases: [0, 1] and [2], each from the base weights, or stacked with --sequential."""
    from romevc.editing.stats import StatsCache
    from romevc.editor import Editor
    from romevc.evaluate import run_evaluation
    from romevc.model import load_base

    cases = load_dataset(_memit_file(tmp_path), 3)
    editor = Editor(load_base(str(TINY_GPT2)), StatsCache(n_tokens=2000, root=tmp_path / "stats"))
    hp = editor.memit_hparams(mom2_update_weight=10.0)  # the tiny model's λ (see tests/test_memit.py)
    computed = []

    def spy(requests, hparams):
        computed.append(result := Editor.compute_memit(editor, requests, hparams))
        return result

    editor.compute_memit = spy
    records: list[dict] = []
    report = run_evaluation(editor, cases, ["memit"], [1], batch_size=2, memit_hparams=hp,
                            on_record=records.append, progress=False)
    run = report["runs"][0]
    assert [[r.subject for r in c.requests] for c in computed] == [[cases[0].request.subject, cases[1].request.subject],
                                                                   [cases[2].request.subject]]
    assert computed[0].weights_fingerprint == computed[1].weights_fingerprint  # both from the base
    assert records[0]["kind"] == "unedited"
    records = records[1:]
    assert [(r["kind"], r["start"], r["size"], len(r["scores"])) for r in records] == [("batch", 0, 2, 2),
                                                                                      ("batch", 2, 1, 1)]
    assert run["summary"]["ES"] == 100.0 and run["summary"]["PS"] == 100.0
    per_layer = [n for r in records for n in r["delta_norms"]]
    assert len(per_layer) == 4 and math.isclose(run["mean_delta_norm"], sum(per_layer) / 4)
    assert math.isclose(run["seconds_per_edit"], sum(r["seconds"] for r in records) / 3)
    json.dumps(records)

    computed.clear()
    records.clear()
    again = run_evaluation(editor, cases, ["memit"], [1], batch_size=2, memit_hparams=hp, sequential=True,
                           checkpoints=[1], on_record=records.append, progress=False)
    assert computed[0].weights_fingerprint != computed[1].weights_fingerprint  # the second sees the first
    assert [r["kind"] for r in records] == ["unedited", "batch", "checkpoint", "batch"]
    assert records[2]["edits"] == 2 and records[2]["summary"]["n"] == 2
    assert again["runs"][0]["summary"]["ES"] == 100.0 and editor.applied() == ()


def test_memit_on_zsre_and_resumed_batches(tmp_path):
    from romevc.editing.stats import StatsCache
    from romevc.editor import Editor
    from romevc.evaluate import run_evaluation
    from romevc.model import load_base

    cases = load_dataset(_memit_file(tmp_path), 3)
    editor = Editor(load_base(str(TINY_GPT2)), StatsCache(n_tokens=2000, root=tmp_path / "stats"))
    hp = editor.memit_hparams(mom2_update_weight=10.0)
    first: list[dict] = []
    full = run_evaluation(editor, cases, ["memit"], [1], batch_size=2, memit_hparams=hp, on_record=first.append,
                          progress=False)
    computed = []
    editor.compute_memit = lambda requests, hparams: computed.append(requests) or Editor.compute_memit(
        editor, requests, hparams)
    resumed = run_evaluation(editor, cases, ["memit"], [1], batch_size=2, memit_hparams=hp, done=first[:2],
                             progress=False)
    assert [[r.subject for r in c] for c in computed] == [[cases[2].request.subject]]
    assert resumed["runs"][0]["summary"] == full["runs"][0]["summary"]

    zsre = tmp_path / "zsre-memit.json"
    zsre.write_text(json.dumps([{"subject": c.request.subject, "src": c.request.text, "alt": c.request.target_new,
                                 "answers": [c.request.target_true], "rephrase": c.paraphrases[0],
                                 "loc": c.neighbours[0][0], "loc_ans": c.neighbours[0][1]} for c in cases]))
    report = run_evaluation(editor, load_dataset(zsre), ["memit"], [1], memit_hparams=hp, progress=False)
    assert report["dataset"] == "zsre" and report["runs"][0]["layer"] == "0-1"
    assert report["runs"][0]["summary"]["efficacy"] > report["unedited"]["efficacy"]


# -- generation entropy ------------------------------------------------------------------------------

def test_ngram_entropy_of_hand_made_texts():
    from romevc.evaluate import ngram_entropy

    def expected(h2, h3):  # ROME's weighting: mean of (2/3·H₂, 4/3·H₃)
        return (2 / 3 * h2 + 4 / 3 * h3) / 2

    assert ngram_entropy("ha ha ha ha ha ha") == 0.0  # one bigram, one trigram
    assert ngram_entropy("hello") == 0.0  # no n-grams at all
    # six distinct words: 5 distinct bigrams, 4 distinct trigrams
    assert math.isclose(ngram_entropy("one two three four five six"), expected(math.log2(5), math.log2(4)))
    # a b a b: bigrams ab, ba, ab (H = H(2/3, 1/3)); trigrams aba, bab (1 bit)
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert math.isclose(ngram_entropy("a b a b"), expected(h2, 1.0))
    # punctuation marks are words of their own: Paris , France . → 3 bigrams, 2 trigrams
    assert math.isclose(ngram_entropy("Paris, France."), expected(math.log2(3), 1.0))


def test_generation_is_seeded_top_k_sampling_and_top_1_is_greedy():
    from romevc.evaluate import generate_text
    from romevc.model import load_base

    loaded = load_base(str(TINY_GPT2))
    model, tok = loaded.model, loaded.tokenizer
    prompt = "Tomas Varek lives in the city of"
    greedy = tok(prompt)["input_ids"]
    with torch.no_grad():
        while len(greedy) < 16:  # no cache: the full sequence every step
            greedy.append(int(model(input_ids=torch.tensor([greedy])).logits[0, -1].argmax()))
    assert generate_text(model, tok, prompt, 16, top_k=1) == tok.decode(greedy, skip_special_tokens=True)
    sampled = generate_text(model, tok, prompt, 16, seed=3)
    assert sampled == generate_text(model, tok, prompt, 16, seed=3) and sampled.startswith(prompt)
    assert len(tok(sampled)["input_ids"]) <= 17
    assert len(generate_text(model, tok, prompt, 1000)) > len(prompt)  # cut to the 32-token context, not refused


def test_generation_entropy_on_original_format_records(tmp_path):
    from romevc.editing.stats import StatsCache
    from romevc.editor import Editor
    from romevc.evaluate import generate_text, ngram_entropy, render_report, run_evaluation
    from romevc.model import load_base

    facts = [f for f in json.loads((TINY_GPT2 / "facts.json").read_text()) if f["relation"] == "city"][:2]
    records = [{"case_id": i, "requested_rewrite": {"prompt": f["prompt"], "subject": f["subject"],
                "target_new": {"str": "Paris"}, "target_true": {"str": f["target"]}},
                "paraphrase_prompts": [f["paraphrases"][0].format(f["subject"])],
                "neighborhood_prompts": [facts[1 - i]["prompt"].format(facts[1 - i]["subject"])],
                "generation_prompts": [f"{f['subject']} is known for", f"The city where {f['subject']} lives is"]}
               for i, f in enumerate(facts)]
    path = tmp_path / "cf-original.json"
    path.write_text(json.dumps(records))
    cases = load_dataset(path)
    assert cases[1].generation_prompts == tuple(records[1]["generation_prompts"])
    editor = Editor(load_base(str(TINY_GPT2)), StatsCache(n_tokens=2000, root=tmp_path / "stats"))
    report = run_evaluation(editor, cases, ["r-rome"], [1], gen_tokens=12, progress=False)
    by_hand = [ngram_entropy(generate_text(editor.model, editor.tokenizer, p, 12, seed=i))
               for c in cases for i, p in enumerate(c.generation_prompts)]
    assert math.isclose(report["unedited"]["GE"], 100 * sum(by_hand) / len(by_hand))
    assert 0 < report["unedited"]["GE"] and math.isfinite(report["runs"][0]["summary"]["GE"])
    assert " GE " in render_report(report).splitlines()[1] + " "
    off = run_evaluation(editor, cases, ["r-rome"], [1], gen_tokens=0, progress=False)
    assert "GE" not in off["unedited"] and "GE" not in render_report(off)


def test_alphaedit_in_sequence_protects_the_keys_of_earlier_batches(tmp_path):
    """Sequential AlphaEdit batches of one: each batch sees the keys of all batches before it;
    independent batches see none. The CLI runs it and names the method."""
    from romevc.editing.stats import StatsCache
    from romevc.editor import Editor
    from romevc.evaluate import run_evaluation
    from romevc.model import load_base

    cases = load_dataset(_memit_file(tmp_path), 3)
    editor = Editor(load_base(str(TINY_GPT2)), StatsCache(n_tokens=2000, root=tmp_path / "stats"))
    hp = editor.alphaedit_hparams(null_space_energy=0.3, l2=1.0)  # the tiny model's d_ff is 256
    seen = []

    def spy(requests, hparams, preserved):
        seen.append({layer: float(g.trace()) for layer, g in preserved.gram.items()})
        return Editor.compute_alphaedit(editor, requests, hparams, preserved)

    editor.compute_alphaedit = spy
    report = run_evaluation(editor, cases, ["alphaedit"], [1], batch_size=1, sequential=True, alphaedit_hparams=hp,
                            progress=False)
    assert seen[0] == {} and set(seen[1]) == {0, 1} and all(seen[2][l] > seen[1][l] > 0 for l in (0, 1))
    run = report["runs"][0]
    assert run["method"] == "alphaedit" and run["layers"] == [0, 1] and run["summary"]["ES"] >= 66.0
    seen.clear()
    run_evaluation(editor, cases, ["alphaedit"], [1], batch_size=1, alphaedit_hparams=hp, progress=False)
    assert seen == [{}, {}, {}]

    result = CliRunner().invoke(cli, ["eval", str(_memit_file(tmp_path)), "--n", "2", "--method", "alphaedit",
                                      "--tokens", "2000", "--base", str(TINY_GPT2), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["runs"][0]["method"] == "alphaedit"


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_sequential_batches_resume_by_replaying_stored_deltas_and_keys(tmp_path, method):
    """A sequence of batches of one, cut after the first: resumed, it computes only the rest, and the
    rest are bit for bit the uninterrupted run's (same weights; for AlphaEdit, same protected keys)."""
    from romevc.editing.stats import StatsCache
    from romevc.editor import Editor
    from romevc.evaluate import run_evaluation
    from romevc.model import load_base

    cases = load_dataset(_memit_file(tmp_path), 3)
    editor = Editor(load_base(str(TINY_GPT2)), StatsCache(n_tokens=2000, root=tmp_path / "stats"))
    hparams = {"memit_hparams": editor.memit_hparams(mom2_update_weight=10.0)} if method == "memit" else \
        {"alphaedit_hparams": editor.alphaedit_hparams(null_space_energy=0.3, l2=1.0)}
    run = lambda **kw: run_evaluation(editor, cases, [method], [1], batch_size=1, sequential=True,  # noqa: E731
                                      checkpoints=[1, 2], progress=False, **hparams, **kw)
    first: list[dict] = []
    full = run(on_record=first.append)
    batches = [r for r in first if r["kind"] == "batch"]
    assert [r["sequential"] for r in batches] == [True] * 3 and all(len(r["deltas"]) == 2 for r in batches)
    assert ("keys" in batches[0]) == (method == "alphaedit")
    kept = [r for r in first if (r["kind"] == "batch" and r["start"] < 1) or (r["kind"] == "checkpoint"
                                                                            and r["edits"] <= 1)
            or r["kind"] == "unedited"]
    computed = []
    original = getattr(editor, f"compute_{method}")
    setattr(editor, f"compute_{method}", lambda requests, *a: computed.append(requests) or original(requests, *a))
    again: list[dict] = []
    resumed = run(on_record=again.append, done=kept)
    assert [[r.subject for r in c] for c in computed] == [[cases[1].request.subject], [cases[2].request.subject]]
    assert [r["start"] for r in again if r["kind"] == "batch"] == [1, 2]
    for before, after in zip(batches[1:], [r for r in again if r["kind"] == "batch"]):
        assert before["deltas"] == after["deltas"] and before.get("keys") == after.get("keys")
    assert resumed["runs"][0]["summary"] == full["runs"][0]["summary"]
    assert resumed["runs"][0]["checkpoints"] == full["runs"][0]["checkpoints"]
    assert editor.applied() == ()


def test_target_nll_reads_the_head_only_where_needed_and_agrees_with_the_full_logits(tiny):
    """The head applied at the targets' positions gives the NLLs that full logits give."""
    from romevc.predict import target_nll

    model, tokenizer = tiny.model, tiny.tokenizer
    prompts, targets = ["Tomas Varek lives in", "The capital of", "x"], ["Rome", "the old town", "Paris and Oslo"]
    got = target_nll(model, tokenizer, prompts, targets)
    for prompt, target, nll in zip(prompts, targets, got):
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = torch.tensor([prompt_ids + tokenizer(" " + target)["input_ids"]])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]
        n = ids.shape[1] - len(prompt_ids)
        want = -log_probs[torch.arange(len(prompt_ids) - 1, ids.shape[1] - 1), ids[0, len(prompt_ids):]].mean()
        assert n >= 1 and math.isclose(nll, float(want), rel_tol=1e-5, abs_tol=1e-6)
