"""Two folders on one shared ledger through the CLI: each keeps its own HEAD, as git worktrees do.

``tests/test_cli_ledger.py`` runs :func:`two_folders_keep_their_own_heads` on a SQLite file and
``tests/test_cli_postgres.py`` on PostgreSQL, so both backends keep the same promise.
"""
from __future__ import annotations

import json
from pathlib import Path

from romevc.repo import Repo
from tests.tiny_facts import FIXTURE, A, B, C


def _edit(invoke_cli, request) -> None:
    invoke_cli("edit", "--prompt", request.prompt, "--subject", request.subject, "--target", request.target_new)


def _at(folder: Path, ref: str) -> str:
    with Repo.open(folder) as repo:
        return repo.ledger.resolve(ref)


def two_folders_keep_their_own_heads(invoke_cli, monkeypatch, tmp_path: Path, url: str) -> None:
    """Alice creates the ledger at ``url``, Bob joins it; checkouts, edits and branch deletions
    in one folder never move or break the other's HEAD."""
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    init = ["init", "--base", str(FIXTURE), "--ledger", url, "--stats-corpus", str(FIXTURE / "corpus.txt"),
            "--stats-tokens", "3000"]
    alice.mkdir()
    bob.mkdir()
    monkeypatch.chdir(alice)
    invoke_cli(*init, "--author", "Alice")
    _edit(invoke_cli, A)
    first = _at(alice, "main")
    assert json.loads((alice / ".romevc" / "config.json").read_text())["worktree"] is None  # the ledger's HEAD

    # Bob joins: his own HEAD, starting on the branch the ledger's HEAD is on.
    monkeypatch.chdir(bob)
    invoke_cli(*init, "--author", "Bob")
    worktree = json.loads((bob / ".romevc" / "config.json").read_text())["worktree"]
    assert isinstance(worktree, str) and worktree
    assert invoke_cli("status").stdout.startswith(f"On branch main\nHEAD {first[:7]}: 1 edit(s)")
    assert invoke_cli("checkout", "-b", "feature").stdout == "Switched to a new branch 'feature'\n"

    # Bob's checkout left Alice on main: her edit lands on main, not on Bob's branch.
    monkeypatch.chdir(alice)
    assert invoke_cli("status").stdout.startswith("On branch main\n")
    _edit(invoke_cli, B)
    second = _at(alice, "HEAD")
    assert _at(alice, "main") == second and _at(alice, "feature") == first
    assert _at(bob, "HEAD") == first  # Bob's HEAD is still feature's tip

    # Bob's edit lands on feature and moves only his HEAD; HEAD~1 is relative to each folder's HEAD.
    monkeypatch.chdir(bob)
    _edit(invoke_cli, C)
    third = _at(bob, "HEAD")
    assert _at(bob, "feature") == third and _at(bob, "HEAD~1") == first
    assert (_at(alice, "HEAD"), _at(alice, "HEAD~1"), _at(alice, "main")) == (second, first, second)
    assert [c["id"] for c in json.loads(invoke_cli("log", "--json").stdout)] == [third, first]
    assert invoke_cli("log", "--oneline").stdout.startswith(f"{third[:7]} (HEAD -> feature) ")

    # A branch another folder has checked out cannot be deleted, not even with -D.
    monkeypatch.chdir(alice)
    for flag in ("-d", "-D"):
        assert "checked out in another folder" in invoke_cli("branch", flag, "feature", code=1).stderr
    assert _at(alice, "feature") == third
    rows = json.loads(invoke_cli("branch", "--json").stdout)  # no worktree HEAD rows among the branches
    assert rows == [{"name": "feature", "commit": third, "current": False},
                    {"name": "main", "commit": second, "current": True}]
    monkeypatch.chdir(bob)
    assert "checked out in another folder" in invoke_cli("branch", "-D", "main", code=1).stderr
    assert json.loads(invoke_cli("verify", "--json").stdout)["ok"] is True

    # Once Bob moves off feature, Alice may delete it.
    invoke_cli("checkout", "main")
    assert _at(bob, "HEAD") == second
    monkeypatch.chdir(alice)
    assert invoke_cli("branch", "-D", "feature").stdout == f"Deleted branch feature (was {third[:7]}).\n"
    assert invoke_cli("status").stdout.startswith(f"On branch main\nHEAD {second[:7]}: 2 edit(s)")
    assert json.loads(invoke_cli("verify", "--json").stdout)["ok"] is True
