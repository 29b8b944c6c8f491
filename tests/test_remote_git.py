"""The git remote beyond the shared contract: its history, and what a hostile repository can hold.

A bare repository in ``tmp_path`` is the remote; ``git`` on the command line plays another
user who commits a symlink, a pickle or an altered file on top of a push.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from romevc.remotes import sync
from romevc.remotes.errors import EditSetHashError, UnsafeEditSetError
from test_remote import C, _hub_online, assert_same_weights, copy, init_options, seeded, snapshot, state  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("one_thread")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=Mallory", "-c", "user.email=m@example.org", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture()
def bare(tmp_path) -> Path:
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "remote.git")], check=True)
    return tmp_path / "remote.git"


@pytest.fixture()
def pushed(bare, copy):
    source, other = copy("source"), copy("other")
    for repo in (source, other):
        sync.add_remote(repo, "origin", str(bare))
    sync.push(source, "origin")
    return source, other


def commit_on_top(bare: Path, tmp_path: Path, change) -> None:
    """Clone the bare repository, let ``change(work)`` alter the files, commit and push."""
    work = tmp_path / "mallory"
    subprocess.run(["git", "clone", "-q", "--branch", "main", str(bare), str(work)], check=True)
    change(work)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "innocent update")
    git(work, "push", "-q", "origin", "HEAD:main")


def test_one_git_commit_per_push_authored_like_the_romevc_commit(bare, pushed, tmp_path):
    source, _ = pushed
    source.edit(C, time=3)
    sync.push(source, "origin")
    log = [line.split("|") for line in git(bare, "log", "--format=%H|%an <%ae>|%at|%s", "main").splitlines()]
    assert len(log) == 2
    assert log[0][1:3] == ["Ada <ada@example.org>", "3"] and log[0][3].startswith("romevc: main at ")
    assert git(bare, "ls-tree", "--name-only", "main").split() == ["README.md", "edits.safetensors", "romevc.json"]
    assert git(bare, "tag", "--list") == "v1" and git(bare, "rev-parse", "v1^{commit}") == log[1][0]


def test_git_clone_round_trip_is_bit_identical(bare, pushed, tmp_path, tiny):
    source, _ = pushed
    with sync.clone(f"file://{bare}", tmp_path / "clone", loaded=tiny, **init_options(tmp_path)) as clone:
        assert clone.ledger.head() == source.ledger.head()
        assert_same_weights(state(clone), state(source))


def test_a_symlink_in_the_repository_is_refused(bare, pushed, tmp_path):
    _, other = pushed
    commit_on_top(bare, tmp_path, lambda work: os.symlink("/etc/passwd", work / "extra.json"))
    before = snapshot(other)
    with pytest.raises(UnsafeEditSetError, match="symlink"):
        sync.fetch(other, "origin")
    assert snapshot(other) == before


def test_a_pickle_in_the_repository_is_refused(bare, pushed, tmp_path):
    _, other = pushed
    commit_on_top(bare, tmp_path, lambda work: (work / "pytorch_model.bin").write_bytes(b"\x80\x04\x95"))
    before = snapshot(other)
    with pytest.raises(UnsafeEditSetError, match="pickle"):
        sync.pull(other, "origin")
    assert snapshot(other) == before


def test_an_altered_manifest_is_refused(bare, pushed, tmp_path):
    _, other = pushed

    def rewrite(work: Path) -> None:
        text = (work / "romevc.json").read_text()
        altered = text.replace('"message": "Ines Zatok', '"message": "Ines Zatek')
        assert altered != text
        (work / "romevc.json").write_text(altered)
    commit_on_top(bare, tmp_path, rewrite)
    before = snapshot(other)
    with pytest.raises(EditSetHashError):
        sync.fetch(other, "origin")
    assert snapshot(other) == before
