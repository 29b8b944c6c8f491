"""The ``Remote`` contract and push/fetch/pull/clone, run against every implementation.

Each test runs three times: on :class:`MemoryRemote`, on the Hub through the real
huggingface_hub client talking to ``tests/hub_server.py`` on 127.0.0.1, and on git through
gitpython and a bare repository in ``tmp_path``. Repositories are copies of one seeded
repository on the tiny GPT-2 fixture (two edits, a tag), so each test costs milliseconds
to seconds. The other ``test_remote_*`` modules import these fixtures.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from hub_server import HubServer
from romevc.remotes import sync
from romevc.remotes.errors import RemoteMovedError, RemoteRefError
from romevc.remotes.protocol import MemoryRemote, Remote, open_remote
from romevc.repo import Repo
from tests.tiny_facts import AUTHOR, FIXTURE, A, B, C, D

pytestmark = pytest.mark.usefixtures("one_thread")


# -- repositories -------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _hub_online(monkeypatch):
    """The test Hub is on 127.0.0.1: allow huggingface_hub to reach it even under HF_HUB_OFFLINE=1."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tiny) -> Path:
    """A repository with A and B on main and tag v1 at B (made once per module)."""
    root = tmp_path_factory.mktemp("seeded")
    with Repo.init(root / "repo", str(FIXTURE), loaded=tiny, **init_options(root)) as repo:
        repo.edit(A, time=1)
        repo.edit(B, time=2)
        repo.tag("v1")
    return root / "repo"


def init_options(root: Path) -> dict:
    return dict(author=AUTHOR, stats_corpus=str(FIXTURE / "corpus.txt"), stats_tokens=3000,
                stats_root=str(root / "stats"), time=0)


@pytest.fixture()
def copy(seeded, tmp_path, tiny):
    """``copy(name)``: an open copy of the seeded repository (closed after the test)."""
    opened = []

    def make(name: str) -> Repo:
        shutil.copytree(seeded, tmp_path / name)
        opened.append(Repo.open(tmp_path / name, loaded=tiny))
        return opened[-1]

    yield make
    for repo in opened:
        repo.close()


def state(repo: Repo, ref: str = "HEAD") -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in repo.model(ref).model.state_dict().items()}


def assert_same_weights(x: dict, y: dict) -> None:
    assert x.keys() == y.keys()
    assert not [k for k in x if not torch.equal(x[k], y[k])]


def snapshot(repo: Repo) -> tuple:
    """Everything a fetch could change: refs, remotes and the stored objects."""
    report = repo.ledger.verify_all()
    return ([(r.name, r.target) for r in repo.ledger.list_refs()], repo.ledger.list_remotes(),
            report.edits, report.commits)


# -- where the remote lives ----------------------------------------------------------------------------------

@dataclass
class Where:
    """A remote of one kind: its URL, the keyword arguments sync functions need, a way to open it."""

    kind: str
    url: str
    options: dict = field(default_factory=dict)  # remote= or endpoint= for sync.push/fetch/pull/clone
    hub: HubServer | None = None

    def open(self) -> Remote:
        return self.options.get("remote") or open_remote(self.url, endpoint=self.options.get("endpoint"))


@pytest.fixture(params=["memory", "hub", "git"])
def where(request, tmp_path):
    if request.param == "memory":
        yield Where("memory", "memory://edits", {"remote": MemoryRemote("memory://edits")})
    elif request.param == "hub":
        with HubServer() as hub:
            yield Where("hub", "hf://org/edits", {"endpoint": hub.url}, hub)
    else:
        subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "remote.git")], check=True)
        yield Where("git", str(tmp_path / "remote.git"))


# -- the protocol -------------------------------------------------------------------------------------------------

def files(tmp_path: Path, name: str, **content: bytes) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for file, data in content.items():
        (folder / file.replace("_", ".")).write_bytes(data)
    return folder


def test_publish_creates_then_moves_a_branch_by_compare_and_swap(where, tmp_path):
    remote = where.open()
    try:
        assert remote.refs().branches == {}
        first = remote.publish("main", files(tmp_path, "one", a_json=b"{}", README_md=b"# one\n"),
                               parent=None, message="one")
        assert remote.refs().branches["main"] == first and remote.refs().default_branch == "main"
        assert {e.path for e in remote.entries(first) if e.kind == "file"} >= {"a.json", "README.md"}
        second = remote.publish("main", files(tmp_path, "two", b_json=b"[1]"), parent=first, message="two")
        names = {e.path for e in remote.entries(second) if e.kind == "file"}
        assert "b.json" in names and "a.json" not in names  # a push replaces the branch's files
        remote.download(second, ["b.json"], tmp_path / "got")
        assert (tmp_path / "got" / "b.json").read_bytes() == b"[1]"
        with pytest.raises(RemoteMovedError):
            remote.publish("main", files(tmp_path, "late", c_json=b"{}"), parent=first, message="late")
        with pytest.raises(RemoteMovedError):
            remote.publish("main", files(tmp_path, "new", d_json=b"{}"), parent=None, message="as if new")
        assert remote.refs().branches["main"] == second
        side = remote.publish("side", files(tmp_path, "side", e_json=b"{}"), parent=None, message="side")
        assert remote.refs().branches == {"main": second, "side": side}
    finally:
        remote.close()


def test_tags_are_created_once(where, tmp_path):
    remote = where.open()
    try:
        first = remote.publish("main", files(tmp_path, "one", a_json=b"{}"), parent=None, message="one")
        second = remote.publish("main", files(tmp_path, "two", a_json=b"[]"), parent=first, message="two")
        assert remote.tag("v1", first) and remote.tag("v1", first)
        assert not remote.tag("v1", second)  # never moved
        assert remote.refs().tags == {"v1": first}
    finally:
        remote.close()


# -- push, fetch, pull, clone ----------------------------------------------------------------------------------------

def test_push_then_clone_gives_bit_identical_weights(where, copy, tmp_path, tiny):
    source = copy("source")
    sync.add_remote(source, "origin", where.url)
    pushed = sync.push(source, "origin", **where.options)
    assert (pushed.status, pushed.commits, pushed.edits, pushed.tags) == ("created", 2, 2, ("v1",))
    assert sync.push(source, "origin", **where.options).status == "up-to-date"
    assert source.ledger.resolve("origin/main") == source.ledger.resolve("main")
    with sync.clone(where.url, tmp_path / "clone", loaded=tiny, **where.options, **init_options(tmp_path)) as clone:
        assert clone.ledger.head() == source.ledger.head()
        assert [c.id for c in clone.log()] == [c.id for c in source.log()]
        assert clone.ledger.resolve("v1") == source.ledger.resolve("v1")
        assert clone.ledger.get_remote("origin").seen == {"main": source.ledger.resolve("main")}
        assert_same_weights(state(clone), state(source))


def test_a_push_onto_a_moved_branch_is_refused_until_merged(where, copy, tmp_path, tiny):
    ours, theirs = copy("ours"), copy("theirs")
    for repo in (ours, theirs):
        sync.add_remote(repo, "origin", where.url)
    sync.push(ours, "origin", **where.options)
    ours.edit(C, time=3)
    theirs.edit(D, time=4)
    assert sync.push(ours, "origin", **where.options).status == "fast-forward"
    before = snapshot(theirs)
    with pytest.raises(RemoteMovedError, match="fetch and merge first"):
        sync.push(theirs, "origin", **where.options)
    assert snapshot(theirs) == before  # a refused push changes nothing here either
    pulled = sync.pull(theirs, "origin", time=5, **where.options)
    assert pulled.merge.kind == "merge" and pulled.fetch.branches[0].new_commits == 1
    assert sync.push(theirs, "origin", **where.options).status == "fast-forward"
    assert sync.pull(ours, "origin", **where.options).merge.kind == "fast-forward"
    assert_same_weights(state(ours), state(theirs))
    assert [top.token for top in (ours.predict("HEAD", r.text, 1)[0] for r in (C, D))] == ["Oslo", "Lima"]


def test_fetch_takes_every_branch_and_skips_foreign_ones(where, copy, tmp_path):
    source, other = copy("source"), copy("other")
    source.checkout("HEAD", create="side")
    source.edit(C, time=3)
    sync.add_remote(source, "origin", where.url)
    sync.push(source, "origin", "main", **where.options)
    sync.push(source, "origin", "side", **where.options)
    remote = where.open()
    try:
        remote.publish("notes", files(tmp_path, "notes", x_json=b"{}"), parent=None, message="not an edit set")
    finally:
        remote.close()
    sync.add_remote(other, "up", where.url)
    fetched = sync.fetch(other, "up", **where.options)
    assert [b.branch for b in fetched.branches] == ["main", "side"] and fetched.skipped == ("notes",)
    assert other.ledger.resolve("up/side") == source.ledger.resolve("side")
    assert other.ledger.get_remote("up").seen == {"main": source.ledger.resolve("main"),
                                                 "side": source.ledger.resolve("side")}
    with pytest.raises(RemoteRefError, match="holds no romevc edit set"):
        sync.fetch(other, "up", "notes", **where.options)
    with pytest.raises(RemoteRefError, match="no branch 'nope'"):
        sync.fetch(other, "up", "nope", **where.options)
    sync.remove_remote(other, "up")
    assert other.ledger.list_refs("refs/remotes/") == []


def test_pushing_needs_a_branch_with_commits(copy, tmp_path):
    repo = copy("repo")
    memory = MemoryRemote()
    sync.add_remote(repo, "origin", "memory://x")
    repo.checkout("HEAD~1")
    with pytest.raises(RemoteRefError, match="detached"):
        sync.push(repo, "origin", remote=memory)
    with pytest.raises(RemoteRefError, match="no local branch 'nope'"):
        sync.push(repo, "origin", "nope", remote=memory)
    with pytest.raises(RemoteRefError, match="does not exist yet"):
        sync.fetch(repo, "origin", remote=MemoryRemote())
