"""The repository commands through click's CliRunner: exit codes and output, text and JSON.

State is set up and checked through the library (``Repo``), as sqlite-utils' CLI tests do;
ids are read from the ledger so expected output can be spelled out exactly.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from romevc.cli import cli
from romevc.cli.ledger_commands import COMMANDS
from romevc.editing.request import EditRequest
from romevc.repo import Repo
from tests.shared_ledger import two_folders_keep_their_own_heads
from tests.tiny_facts import FIXTURE, A, B, C, fact

pytestmark = pytest.mark.usefixtures("one_thread")


def edit_args(request: EditRequest) -> list[str]:
    return ["edit", "--prompt", request.prompt, "--subject", request.subject, "--target", request.target_new]


@pytest.fixture()
def run(invoke_cli, monkeypatch, tmp_path):
    """``run(*args)`` invokes ``romevc`` in ``tmp_path/repo`` (created) with a private cache."""
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    return invoke_cli


@pytest.fixture()
def repo_dir(run, tmp_path) -> Path:
    run("init", "--base", str(FIXTURE), "--stats-corpus", str(FIXTURE / "corpus.txt"), "--stats-tokens", "3000",
        "--author", "Ada")
    return tmp_path / "repo"


def head(repo_dir: Path, ref: str = "HEAD") -> str:
    with Repo.open(repo_dir) as repo:
        return repo.ledger.resolve(ref)


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    for command in COMMANDS + [cli.commands["predict"]]:
        result = runner.invoke(cli, [command.name, "--help"])
        assert result.exit_code == 0, command.name
        assert "Example:" in (command.help or ""), f"{command.name} has no example"


def test_init_and_init_again(run, tmp_path):
    result = run("init", "--base", str(FIXTURE), "--json")
    data = json.loads(result.stdout)
    assert data["base"] == str(FIXTURE.resolve()) and data["architecture"] == "gpt2" and data["branch"] == "main"
    result = run("init", "--base", str(FIXTURE), code=1)
    assert result.stderr == f"error: {tmp_path / 'repo'} is already a romevc repository\n"
    result = run("init", "--base", str(FIXTURE), str(tmp_path / "other"))
    assert result.stdout.startswith(f"Initialized empty romevc repository in {tmp_path / 'other'}/.romevc\n")


def test_edit_commits_and_prints_like_git(run, repo_dir):
    result = run(*edit_args(A))
    first = head(repo_dir)
    with Repo.open(repo_dir) as repo:
        edit_id = repo.records("HEAD")[0].id
    assert result.stdout.startswith(f"[main {first[:7]}] Tomas Varek lives in the city of → Rome\n"
                                    f"  + {edit_id[:7]}  layer 1  Tomas Varek lives in the city of → Rome  ‖ΔW‖ ")
    data = json.loads(run(*edit_args(B), "-m", "Ines moves", "--layer", "2", "--json").stdout)
    assert data["commit"]["message"] == "Ines moves" and data["commit"]["parents"] == [first]
    assert data["edits"][0]["layer"] == 2 and data["branch"] == "main"


def test_edit_prompt_key_switch_is_recorded(run, repo_dir):
    run(*edit_args(A), "--no-prompt-key")
    run(*edit_args(B))
    with Repo.open(repo_dir) as repo:
        assert [r.hparams["prompt_key"] for r in repo.records("HEAD")] == [False, True]
    result = run(*edit_args(C), "--method", "rome", "--prompt-key", code=2)
    assert "an r-rome setting" in result.stderr


def test_edit_outside_a_repository_shows_but_does_not_save(run, tmp_path):
    result = run(*edit_args(A), "--base", str(FIXTURE))
    assert result.stdout.startswith("edit: Tomas Varek lives in the city of → Rome  (r-rome, transformer.h.1.mlp.c_proj")
    assert "after:  'Rome'" in result.stdout
    assert "not inside a romevc repository, so nothing was saved" in result.stderr
    assert json.loads(run(*edit_args(A), "--base", str(FIXTURE), "--json").stdout)["saved"] is False
    assert not (tmp_path / "repo" / ".romevc").exists()


def test_edit_batch_and_a_bad_line(run, repo_dir, tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(A.to_dict()) + "\n\n" + json.dumps(B.to_dict()) + "\n")
    result = run("edit", "--batch", str(good))
    assert [line[:6] for line in result.stdout.splitlines()[::2]] == ["[main ", "[main "]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(C.to_dict()) + "\n" + json.dumps({"prompt": "{} x", "subject": "S"}) + "\n")
    result = run("edit", "--batch", str(bad), code=1)
    assert result.stderr.startswith(f"error: {bad}:2: an edit request lacks target_new")
    assert result.stderr.count("\n") == 1
    with Repo.open(repo_dir) as repo:
        assert len(repo.log()) == 2
    assert run("edit", code=2).exit_code == 2  # neither a request nor --batch
    assert "--batch takes its requests" in run("edit", "--batch", str(good), "-m", "x", code=2).output


def test_log_oneline_full_and_json(run, repo_dir):
    run(*edit_args(A))
    run(*edit_args(B), "-m", "second\n\nwith a body")
    one, two = head(repo_dir, "HEAD~1"), head(repo_dir)
    assert run("log", "--oneline").stdout == (f"{two[:7]} (HEAD -> main) second\n"
                                              f"{one[:7]} Tomas Varek lives in the city of → Rome\n")
    full = run("log", "-n", "1").stdout.splitlines()
    assert full[0] == f"commit {two} (HEAD -> main)" and full[1] == "Author: Ada" and full[2].startswith("Date:   ")
    assert full[3:] == ["", "    second", "    ", "    with a body"]
    data = json.loads(run("log", "--json", "HEAD~1").stdout)
    assert [(c["id"], c["refs"], c["edits"]) for c in data] == [(one, [], 1)]


def test_show_status_and_diff(run, repo_dir, tmp_path):
    run(*edit_args(A))
    out = run("show").stdout
    assert "+ " in out and "layer 1  Tomas Varek lives in the city of → Rome  ‖ΔW‖" in out
    assert "    before: 'Vienna'" in out and "    after:  'Rome'" in out
    data = json.loads(run("show", "HEAD", "--json").stdout)
    assert data["effects"][0]["after"]["token"] == "Rome" and data["added"][0]["stale"] is False
    assert json.loads(run("show", "--no-predict", "--json").stdout)["effects"] == []
    tip = head(repo_dir)
    status = run("status").stdout.splitlines()
    assert status[:2] == ["On branch main", f"HEAD {tip[:7]}: 1 edit(s), 0 stale"]
    assert status[2].startswith(f"base {FIXTURE.resolve()} (gpt2, float32, fingerprint ")
    run(*edit_args(B))
    assert run("diff", "HEAD~1").stdout == (f"diff {tip[:7]}..{head(repo_dir)[:7]}\nlayer 1\n"
                                            "+ Ines Zatok lives in the city of → Paris\n")
    probes = tmp_path / "probes.txt"
    probes.write_text(f"{A.text}\n{B.text}\n")
    out = run("diff", "HEAD~1", "HEAD", "--probe", str(probes)).stdout
    assert out.endswith("probes: 1 of 2 prompt(s) change their top prediction\n"
                        "  'Ines Zatok lives in the city of': 'Madrid' -> 'Paris'\n")


def test_revert_apply_blame(run, repo_dir, tmp_path):
    run(*edit_args(A))
    first = head(repo_dir)
    run(*edit_args(B))
    out = run("revert", first[:7]).stdout
    assert out.startswith(f"[main {head(repo_dir)[:7]}] Revert \"Tomas Varek lives in the city of → Rome\"\n  - ")
    edits = tmp_path / "set.jsonl"
    edits.write_text(json.dumps(C.to_dict()) + "\n")
    assert run("apply", str(edits)).stdout.startswith(f"[main {head(repo_dir)[:7]}] Apply set.jsonl: 1 edit(s)\n")
    blame = run("blame", "Tomas Varek").stdout.splitlines()
    assert [line.split(" + ")[0][:7] if " + " in line else line.split(" - ")[0][:7] for line in blame] == \
        [first[:7], head(repo_dir, "HEAD~1")[:7]]
    assert " - layer 1  Tomas Varek" in blame[1]
    assert len(json.loads(run("blame", "--layer", "1", "--json").stdout)) == 4
    run("blame", code=2)


def test_branch_checkout_tag(run, repo_dir):
    run(*edit_args(A))
    tip = head(repo_dir)
    assert run("branch", "feature").stdout == f"Created branch feature at {tip[:7]}\n"
    assert run("branch").stdout == "  feature\n* main\n"
    assert run("checkout", "feature").stdout == "Switched to branch 'feature'\n"
    run(*edit_args(B))
    assert run("checkout", "main").stdout == "Switched to branch 'main'\n"
    assert run("branch", "-d", "feature", code=1).stderr == \
        "error: branch 'feature' is not merged into HEAD; delete it anyway with -D\n"
    assert run("tag", "v1").stdout == f"Tagged {tip[:7]} as v1\n" and run("tag").stdout == "v1\n"
    assert run("checkout", "v1").stdout.startswith(f"HEAD is now at {tip[:7]} Tomas Varek")
    assert run("status").stdout.startswith(f"HEAD detached at {tip[:7]}\n")
    assert run(*edit_args(C), code=1).stderr.startswith(f"error: HEAD is detached at {tip[:7]}")
    assert run("checkout", "-b", "side").stdout == "Switched to a new branch 'side'\n"
    assert run("checkout", "--orphan", "fresh").stdout == "Switched to a new branch 'fresh'\n"
    assert run("status").stdout.startswith("On branch fresh\nNo commits yet\n")
    run("checkout", "main")
    assert run("branch", "-D", "feature").stdout.startswith("Deleted branch feature (was ")
    assert run("tag", "-d", "v1").stdout == f"Deleted tag 'v1' (was {tip[:7]})\n"
    assert json.loads(run("branch", "--json").stdout) == [{"name": "main", "commit": tip, "current": True},
                                                         {"name": "side", "commit": tip, "current": False}]


def test_two_folders_on_one_sqlite_ledger_keep_their_own_heads(invoke_cli, monkeypatch, tmp_path):
    two_folders_keep_their_own_heads(invoke_cli, monkeypatch, tmp_path, f"sqlite:///{tmp_path / 'shared.db'}")


def test_merge_conflict_resolution_and_rebase(run, repo_dir):
    run(*edit_args(A))
    run("checkout", "-b", "feature")
    run(*edit_args(fact("Ines Zatok", target="Cairo")))
    run("checkout", "main")
    run(*edit_args(B))
    tip = head(repo_dir)
    result = run("merge", "feature", code=1)
    assert result.stderr.startswith("error: merge conflict: 1 pair(s) of edits cannot be combined: "
                                    "Ines Zatok lives in the city of → Paris (ours ")
    assert result.stderr.endswith("same fact; nothing was written — keep one side with --ours or --theirs\n")
    assert head(repo_dir) == tip
    out = run("merge", "feature", "--theirs").stdout
    assert out.startswith(f"Merge made: {head(repo_dir)[:7]}\n") and "dropped " in out
    assert run("merge", "feature").stdout == "Already up to date.\n"
    run("checkout", "-b", "later")
    run(*edit_args(C))
    run("checkout", "main")
    assert run("merge", "later").stdout.startswith(f"Fast-forward to {head(repo_dir, 'later')[:7]}\n")
    run("rebase", code=1)  # nothing stale at HEAD: Cairo was computed on A, and lands on A alone
    data = json.loads(run("merge", "--json", "feature").stdout)
    assert data["kind"] == "up-to-date"


def test_merge_stale_then_rebase(run, repo_dir):
    run(*edit_args(A))
    run("checkout", "-b", "feature")
    run(*edit_args(C))
    run("checkout", "main")
    run(*edit_args(B))
    out = run("merge", "feature").stdout
    assert "1 edit(s) are stale" in out and "stale" in run("status").stdout
    out = run("rebase").stdout
    assert out.startswith(f"Rebased: {head(repo_dir)[:7]}\nrecomputed ")
    assert ", 0 stale" in run("status").stdout


def test_verify_ok_recompute_and_a_flipped_byte(run, repo_dir):
    run(*edit_args(A))
    assert run("verify").stdout == "checked 1 edit(s), 1 commit(s), 2 ref(s)\nok\n"
    out = run("verify", "--recompute").stdout
    assert "recomputed: 1 identical, 0 differs, 0 skipped\nok\n" in out
    with sqlite3.connect(repo_dir / ".romevc" / "ledger.db") as db:
        (edit_id, blob) = db.execute("SELECT id, v FROM edits").fetchone()
        db.execute("UPDATE edits SET v = ? WHERE id = ?", (bytes([blob[0] ^ 0x80]) + blob[1:], edit_id))
    result = run("verify", code=1)
    assert f"problem: edit {edit_id} is corrupt" in result.stdout and result.stdout.endswith("1 problem(s) found\n")
    assert json.loads(run("verify", "--json", code=1).stdout)["ok"] is False


def test_export_generate_predict(run, repo_dir, tmp_path):
    run(*edit_args(A))
    tip = head(repo_dir)
    out = tmp_path / "export"
    assert run("export", "main", "--out", str(out)).stdout == f"Exported {tip[:7]} (1 edit(s)) to {out}\n"
    assert (out / "model.safetensors").is_file()
    assert run("export", "main", "--out", str(out), code=1).stderr.startswith("error: ")
    assert run("generate", "main", A.text, "--max-new-tokens", "1").stdout == f"{A.text} Rome\n"
    assert run("predict", "HEAD", A.text, "--top-k", "1").stdout.endswith("'Rome'\n")
    assert run("predict", A.text, "--top-k", "1").stdout.endswith("'Rome'\n")  # inside a repository: HEAD
    data = json.loads(run("predict", "HEAD~0", A.text, "--json").stdout)
    assert data["base"] == f"HEAD~0 ({tip[:7]})" and data["choices"][0]["token"] == "Rome"
    assert run("predict", "a", "b", "c", code=2).exit_code == 2


def test_user_errors_are_one_line(run, repo_dir, tmp_path):
    run(*edit_args(A))
    for args, start in [
        (["show", "nope"], "error: unknown commit 'nope'"),
        (["log", "main~5"], "error: 'main~5' goes past the root"),
        (["diff", "zzzz"], "error: unknown commit 'zzzz'"),
        (["revert", "HEAD"], None),
        (["revert", "HEAD~1"], "error: nothing to revert"),
        (["apply", str(tmp_path)], "error: "),
        (["edit", "--prompt", "{} is", "--subject", "X", "--target", "Y", "--base", "other"], "error: this repository's base"),
    ]:
        if start is None:
            run(*args)
            continue
        result = run(*args, code=1)
        assert result.stderr.startswith(start) and result.stderr.count("\n") == 1, result.stderr


def test_predict_before_the_first_commit_uses_the_base(run, repo_dir):
    data = json.loads(run("predict", A.text, "--top-k", "1", "--json").stdout)
    assert data["base"] == "HEAD (the base, no commits yet)" and data["choices"][0]["token"] == "Vienna"
    assert run("show", code=1).stderr.startswith("error: HEAD has no commits yet")


def test_a_ledger_from_a_newer_romevc_is_refused(run, repo_dir):
    with sqlite3.connect(repo_dir / ".romevc" / "ledger.db") as db:
        db.execute("UPDATE repo SET format_version = 99")
    result = run("status", code=1)
    assert result.stderr == "error: this ledger was written by a newer romevc (object format 99); upgrade romevc\n"


def test_commands_outside_a_repository_say_so(run):
    for args in (["log"], ["status"], ["predict", "HEAD", "x"]):
        result = run(*args, code=1)
        assert result.stderr.startswith("error: not a romevc repository"), result.stderr
