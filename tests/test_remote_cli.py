"""The remote commands through click's CliRunner, against the test Hub and a bare git repository.

huggingface_hub's endpoint setting (what ``HF_ENDPOINT`` sets) points at the test server.
State is set up and checked through the library, as in ``test_cli_ledger.py``.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from hub_server import HubServer
from romevc.cli.remote_commands import COMMANDS
from romevc.remotes import sync
from romevc.repo import Repo
from test_remote import C, D, _hub_online, copy, seeded  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def hub(monkeypatch):
    from huggingface_hub import constants

    with HubServer() as server:  # what HF_ENDPOINT=<server> sets when huggingface_hub is imported
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        yield server


@pytest.fixture()
def run(invoke_cli, monkeypatch, tmp_path):
    """``run(*args, code=0)`` invokes ``romevc`` in ``tmp_path`` with a private cache."""
    monkeypatch.chdir(tmp_path)
    return invoke_cli


def test_every_remote_command_has_help_with_an_example(run):
    names = [c.name for c in COMMANDS] + [f"remote {n}" for n in ("add", "list", "remove")]
    for name in names:
        assert "Example:" in run(*name.split(), "--help").output, name


def test_remote_add_list_remove(run, copy):
    repo = copy("repo")
    where = ["--repo", str(repo.root)]
    assert run("remote", "add", "origin", "hf://org/edits", *where).stdout == "Added remote origin (hf://org/edits)\n"
    run("remote", "add", "mirror", "/srv/git/edits.git", "--json", *where)
    assert run("remote", *where).stdout == "mirror\t/srv/git/edits.git\norigin\thf://org/edits\n"
    rows = json.loads(run("remote", "list", "--json", *where).stdout)
    assert rows == [{"name": "mirror", "url": "/srv/git/edits.git", "seen": {}},
                    {"name": "origin", "url": "hf://org/edits", "seen": {}}]
    assert run("remote", "add", "origin", "hf://org/x", *where, code=1).output.startswith("error: remote 'origin' "
                                                                                        "already exists")
    assert "write hf://org/name" in run("remote", "add", "bad", "hf://no-slash", *where, code=1).output
    assert run("remote", "remove", "mirror", *where).stdout == "Removed remote mirror\n"
    assert [r.name for r in repo.ledger.list_remotes()] == ["origin"]


def test_push_clone_pull_through_the_hub(run, hub, copy, tmp_path):
    source = copy("source")
    sync.add_remote(source, "origin", "hf://org/edits")
    main = source.ledger.resolve("main")
    out = run("push", "--repo", str(source.root)).stdout
    assert out.startswith(f"Pushed main to origin: created at {main[:7]} (2 commit(s), 2 edit(s), ")
    assert out.endswith(" kB)\ntag v1 -> origin\n")
    assert run("push", "--repo", str(source.root)).stdout == f"Everything up-to-date (origin/main at {main[:7]})\n"

    cloned = json.loads(run("clone", "hf://org/edits", "--json").stdout)
    assert cloned["path"] == str(tmp_path / "edits") and cloned["commit"] == main
    assert (cloned["branch"], cloned["edits"], cloned["branches"]) == ("main", 2, ["origin/main"])
    assert "is not an empty folder" in run("clone", "hf://org/edits", code=1).output

    source.edit(C, time=3)
    run("push", "--repo", str(source.root))
    out = run("pull", "--repo", "edits").stdout
    assert out == (f"   {main[:7]}..{source.ledger.resolve('main')[:7]} origin/main (1 new commit(s))\n"
                   f"Fast-forward to {source.ledger.resolve('main')[:7]}\n"
                   f"+ {source.records('HEAD')[-1].id[:7]}  layer 1  Pavel Tupok lives in the city of → Oslo\n")
    with Repo.open(tmp_path / "edits") as clone:
        assert clone.ledger.head().commit == source.ledger.resolve("main")


def test_a_refused_push_is_one_error_line(run, hub, copy, tiny):
    ours, theirs = copy("ours"), copy("theirs")
    for repo in (ours, theirs):
        sync.add_remote(repo, "origin", "hf://org/edits")
    run("push", "--repo", str(ours.root))
    ours.edit(C, time=3)
    theirs.edit(D, time=4)
    run("push", "--repo", str(ours.root))
    result = run("push", "--repo", str(theirs.root), code=1)
    tip = ours.ledger.resolve("main")[:12]
    assert result.output == (f"error: the remote branch origin/main moved: it is at {tip}, "
                             "which your main does not contain; fetch and merge first (`romevc pull origin main`), "
                             "then push\n")
    fetched = json.loads(run("fetch", "--json", "--repo", str(theirs.root)).stdout)
    assert fetched["branches"][0]["new"] == ours.ledger.resolve("main") and fetched["skipped"] == []
    assert run("fetch", "origin", "nope", "--repo", str(theirs.root), code=1).output.startswith(
        "error: origin has no branch 'nope'")


def test_push_to_and_clone_from_a_bare_git_repository(run, copy, tmp_path):
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "shared.git")], check=True)
    source = copy("source")
    sync.add_remote(source, "origin", str(tmp_path / "shared.git"))
    run("push", "--json", "--repo", str(source.root))
    out = run("clone", str(tmp_path / "shared.git"), "mine").stdout
    assert out.startswith(f"Cloned {tmp_path / 'shared.git'} into {tmp_path / 'mine'}: main at "
                          f"{source.ledger.resolve('main')[:7]} (2 edit(s) on ")
    assert os.path.isdir(tmp_path / "mine" / ".romevc")


def test_export_formats(run, copy, tmp_path):
    from romevc.cli.ledger_commands import export

    if "fmt" not in {p.name for p in export.params}:
        pytest.skip("`export --format` is not merged into romevc/cli/ledger_commands.py yet")
    repo = copy("repo")
    tip = repo.ledger.resolve("main")[:7]
    out = run("export", "main", "--format", "peft", "--out", str(tmp_path / "lora"), "--repo", str(repo.root)).stdout
    assert out == f"Exported {tip} (2 edit(s)) to {tmp_path / 'lora'} as peft\n"
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    data = json.loads(run("export", "v1", "--format", "romevc", "--out", str(tmp_path / "set"), "--json",
                          "--repo", str(repo.root)).stdout)
    assert data["format"] == "romevc" and (tmp_path / "set" / "romevc.json").is_file()
    assert run("export", "main", "--out", str(tmp_path / "full"), "--repo", str(repo.root)).stdout == \
        f"Exported {tip} (2 edit(s)) to {tmp_path / 'full'}\n"
    assert (tmp_path / "full" / "README.md").is_file()  # the full checkpoint carries its model card
