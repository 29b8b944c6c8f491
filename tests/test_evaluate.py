"""Evaluation metrics on hand-made cases whose probabilities are known, and `romevc eval` end to end."""
from __future__ import annotations

import json
import math

import torch
from click.testing import CliRunner

from romevc.cli import cli
from romevc.editing.request import EditRequest
from romevc.evaluate import (CaseScores, CounterFactCase, load_dataset, score_case, summarise, token_accuracy)
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
    assert [p["edits"] for p in run["checkpoints"]] == [1, 2]
    assert [p["summary"]["n"] for p in run["checkpoints"]] == [1, 2]
    assert [r["kind"] for r in records] == ["edit", "checkpoint", "edit", "checkpoint", "edit"]
    assert [r["index"] for r in records if r["kind"] == "edit"] == [0, 1, 2]
    json.dumps(records)  # every record is JSON-able as it is written


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
    resumed = run_evaluation(editor, cases, ["r-rome"], [1], on_record=again.append, progress=False, done=first[:2])
    assert [r.subject for r in computed] == [cases[2].request.subject]
    assert [r["index"] for r in again] == [2]
    assert resumed["runs"][0]["summary"] == full["runs"][0]["summary"]
