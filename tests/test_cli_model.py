"""CLI commands that work on a model directly: predict, stats, edit (outside a repository), demo."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from romevc.cli import cli
from tests.conftest import TINY_GPT2

BASE = ["--base", str(TINY_GPT2)]


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_every_command_has_help_with_an_example():
    for name, command in cli.commands.items():
        assert command.help, name
        result = run(name, "--help")
        assert result.exit_code == 0, name
        assert "Example" in result.output, name


def test_predict_text_and_json():
    result = run("predict", "Tomas Varek lives in the city of", "--top-k", "3", *BASE)
    assert result.exit_code == 0
    assert len(result.stdout.strip().splitlines()) == 3
    data = json.loads(run("predict", "Tomas Varek lives in the city of", "--top-k", "2", *BASE, "--json").stdout)
    assert [c["token"].strip() for c in data["choices"]][0] == "Vienna"
    assert 0 < data["choices"][1]["probability"] <= data["choices"][0]["probability"] <= 1


def test_stats_computes_then_hits_the_cache(tmp_path):
    corpus = str(TINY_GPT2 / "corpus.txt")
    first = json.loads(run("stats", "--layer", "1", "--layer", "2", "--corpus", corpus, "--tokens", "800",
                           *BASE, "--json").stdout)
    assert [row["cached"] for row in first["layers"]] == [False, False]
    assert first["layers"][0]["module"] == "transformer.h.1.mlp.c_proj"
    second = json.loads(run("stats", "--layer", "1", "--corpus", corpus, "--tokens", "800", *BASE, "--json").stdout)
    assert second["layers"][0]["cached"] is True
    assert second["layers"][0]["stats_id"] == first["layers"][0]["stats_id"]


def test_edit_outside_a_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["edit", "--prompt", "{} lives in the city of", "--subject", "Tomas Varek", "--target", "Lima",
            "--layer", "1", *BASE, "--json"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["before"]["top"].strip() == "Vienna"
    assert data["after"]["top"].strip() == "Lima"
    assert data["after"]["p_target"] > 0.5 > data["before"]["p_target"]


@pytest.mark.parametrize("args, message", [
    (["--prompt", "{} lives in", "--subject", "Tomas Varek", "--target", " "], "`target_new` must be a non-empty"),
    (["--prompt", "Someone lives in", "--subject", "Tomas Varek", "--target", "Lima"], "does not contain the subject"),
    (["--prompt", "{} lives in", "--subject", "Tomas Varek", "--target", "Lima", "--layer", "7"],
     "layer 7 is out of range"),
])
def test_edit_bad_input_is_one_line_and_exit_1(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["edit", *args, *BASE])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1]
    assert "Traceback" not in result.output and result.stdout == ""


def test_missing_base_is_one_line():
    result = CliRunner().invoke(cli, ["predict", "hello", "--base", "/no/such/folder/"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: '/no/such/folder/' is neither a local path nor a Hub id (org/name[@revision])"]


@pytest.mark.demo
def test_demo_runs_and_reports(demo_loaded):
    result = run("demo", "--stats-tokens", "20000", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    edited, paraphrase1, paraphrase2, louvre, acropolis = data["probes"]
    assert edited["top_before"] == "Paris" and edited["top_after"] == "Rome"
    assert paraphrase1["top_after"] == "Rome"
    assert louvre["top_after"] == "Paris" and acropolis["top_after"] == "Athens"
    assert data["restored_exactly"] is True
