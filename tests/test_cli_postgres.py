"""The porcelain on a shared PostgreSQL ledger: ``romevc init --ledger postgresql://…``, then
edit, log, branch and checkout on the tiny GPT-2, and a second folder joining the same ledger.

Runs when ROMEVC_TEST_POSTGRES_URL is set (``.ci/run`` sets it); each test gets a fresh
database (``tests/ledger_backends.py``).
"""
from __future__ import annotations

import json

import pytest
from sqlalchemy.engine import make_url

from romevc.repo import Repo
from tests import ledger_backends as backends
from tests.shared_ledger import two_folders_keep_their_own_heads
from tests.tiny_facts import FIXTURE, A, B

pytestmark = [pytest.mark.skipif(backends.POSTGRES_URL is None, reason=backends.POSTGRES_SKIP),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture()
def pg_url(tmp_path):
    """A fresh database's URL, spelled ``postgresql://`` as a user would (no driver named)."""
    with backends.ledger_url("postgresql", tmp_path) as url:
        yield make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def edit_args(request) -> list[str]:
    return ["edit", "--prompt", request.prompt, "--subject", request.subject, "--target", request.target_new]


def init_args(pg_url: str, author: str) -> list[str]:
    return ["init", "--base", str(FIXTURE), "--ledger", pg_url, "--stats-corpus", str(FIXTURE / "corpus.txt"),
            "--stats-tokens", "3000", "--author", author]


def test_init_edit_log_checkout_on_postgresql(invoke_cli, monkeypatch, tmp_path, pg_url):
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    alice.mkdir()
    monkeypatch.chdir(alice)
    assert invoke_cli(*init_args(pg_url, "Alice")).stdout.startswith(
        f"Initialized empty romevc repository in {alice}/.romevc\n")
    assert json.loads((alice / ".romevc" / "config.json").read_text())["ledger"] == pg_url
    assert not (alice / ".romevc" / "ledger.db").exists()  # the ledger is the database, not a file here

    invoke_cli(*edit_args(A))
    with Repo.open(alice) as repo:
        assert repo.ledger.url.get_backend_name() == "postgresql"
        first = repo.ledger.resolve("HEAD")
    assert invoke_cli("log", "--oneline").stdout == f"{first[:7]} (HEAD -> main) {A.text} → {A.target_new}\n"
    assert invoke_cli("checkout", "-b", "feature").stdout == "Switched to a new branch 'feature'\n"
    invoke_cli(*edit_args(B), "-m", "Ines moves")
    with Repo.open(alice) as repo:
        second = repo.ledger.resolve("feature")
    assert invoke_cli("checkout", "main").stdout == "Switched to branch 'main'\n"
    assert invoke_cli("checkout", first[:7]).stdout.startswith(f"HEAD is now at {first[:7]} ")
    assert invoke_cli("status").stdout.startswith(f"HEAD detached at {first[:7]}\n")
    invoke_cli("checkout", "feature")
    assert [c["id"] for c in json.loads(invoke_cli("log", "--json").stdout)] == [second, first]
    assert "Rome" in invoke_cli("predict", A.text).stdout  # the checkout's weights hold the edit

    # A teammate's folder joins the same ledger: same commits, same branches.
    bob.mkdir()
    monkeypatch.chdir(bob)
    invoke_cli(*init_args(pg_url, "Bob"))
    assert [c["id"] for c in json.loads(invoke_cli("log", "--json", "feature").stdout)] == [second, first]
    assert {b["name"]: b["commit"] for b in json.loads(invoke_cli("branch", "--json").stdout)} == \
        {"main": first, "feature": second}
    assert json.loads(invoke_cli("verify", "--json").stdout)["ok"] is True


def test_two_folders_on_postgresql_keep_their_own_heads(invoke_cli, monkeypatch, tmp_path, pg_url):
    two_folders_keep_their_own_heads(invoke_cli, monkeypatch, tmp_path, pg_url)
