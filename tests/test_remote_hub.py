"""The Hub remote beyond the shared contract: what a hostile or busy Hub can do, and tokens.

The real huggingface_hub client talks to ``tests/hub_server.py``; the server's backdoors
(``tamper``, ``plant``) play a compromised host that serves altered or unsafe files.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from hub_server import HubServer
from romevc.remotes import sync
from romevc.remotes.errors import (
    EditSetHashError, RemoteBaseMismatchError, RemoteError, RemoteMovedError, RemoteRefError, UnsafeEditSetError,
)
from romevc.remotes.hub import HubRemote
from romevc.repo import Repo
from test_remote import (  # noqa: F401 - fixtures
    FIXTURE, A, C, D, _hub_online, assert_same_weights, copy, init_options, seeded, snapshot, state,
)

pytestmark = pytest.mark.usefixtures("one_thread")

URL = "hf://org/edits"


@pytest.fixture()
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture()
def pushed(hub, copy):
    """(source, other): source pushed main to hf://org/edits; other is a copy with the remote added."""
    source, other = copy("source"), copy("other")
    for repo in (source, other):
        sync.add_remote(repo, "origin", URL)
    sync.push(source, "origin", endpoint=hub.url)
    return source, other


def resave(data: bytes, change) -> bytes:
    """``data`` (safetensors) with its tensors changed and its metadata kept."""
    from safetensors.numpy import load, save

    size = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8:8 + size])["__metadata__"]
    tensors = load(data)
    change(tensors)
    return save(tensors, metadata=metadata)


# -- a host that serves something else --------------------------------------------------------------------------

def test_pulling_a_tampered_file_is_refused_and_writes_nothing(hub, pushed):
    source, other = pushed
    other.edit(C, time=3)
    before = snapshot(other)
    stored = hub.state.files("org/edits")
    manifest = stored["romevc.json"].replace(b"Tomas Varek lives", b"Tomas Varek lived")  # a commit message
    hub.state.tamper("org/edits", "main", "romevc.json", manifest)
    with pytest.raises(EditSetHashError, match="altered after it was published"):
        sync.pull(other, "origin", endpoint=hub.url)
    assert snapshot(other) == before

    def nudge(tensors):
        key = sorted(tensors)[0]
        tensors[key] = tensors[key] + 1e-4
    hub.state.tamper("org/edits", "main", "romevc.json", stored["romevc.json"])
    hub.state.tamper("org/edits", "main", "edits.safetensors", resave(stored["edits.safetensors"], nudge))
    with pytest.raises(EditSetHashError, match="does not hash to its id"):
        sync.fetch(other, "origin", endpoint=hub.url)
    assert snapshot(other) == before


@pytest.mark.parametrize("name, match", [
    ("../escape.json", "'..'"), ("pytorch_model.bin", "pickle"), ("optimizer.pt", "pickle"), ("run.sh", "not part"),
])
def test_unsafe_files_on_the_hub_are_refused_before_download(hub, pushed, tmp_path, tiny, name, match):
    source, other = pushed
    hub.state.plant("org/edits", "main", {name: b"\x80\x04\x95 payload"})
    before, requests = snapshot(other), len(hub.state.requests)
    with pytest.raises(UnsafeEditSetError, match=match):
        sync.fetch(other, "origin", endpoint=hub.url)
    assert snapshot(other) == before
    assert not [p for _, p in hub.state.requests[requests:] if "/resolve/" in p]  # nothing was downloaded
    with pytest.raises(UnsafeEditSetError):
        sync.clone(URL, tmp_path / "clone", endpoint=hub.url, loaded=tiny, **init_options(tmp_path))
    assert not (tmp_path / "clone").exists()


def test_a_push_that_loses_the_race_is_refused_by_the_hub(hub, pushed):
    """Between reading the remote tip and committing, another push lands: the Hub's
    parent_commit check (HTTP 412) refuses ours, and nothing local moves."""
    source, other = pushed
    sync.pull(other, "origin", endpoint=hub.url)
    source.edit(C, time=3)
    other.edit(D, time=4)

    class Racing(HubRemote):
        def publish(self, *args, **kwargs):
            sync.push(other, "origin", endpoint=hub.url)  # lands first
            return super().publish(*args, **kwargs)

    racing = Racing(URL, endpoint=hub.url)
    seen = source.ledger.get_remote("origin").seen
    with pytest.raises(RemoteMovedError, match="moved while pushing"):
        sync.push(source, "origin", remote=racing)
    assert source.ledger.get_remote("origin").seen == seen
    assert hub.state.files("org/edits")["romevc.json"].count(other.ledger.resolve("main").encode()) > 0


def test_another_base_is_refused_on_fetch_and_clone(hub, pushed, tmp_path):
    from safetensors.torch import load_file, save_file

    from romevc.model import load_base

    other_base = tmp_path / "other-base"
    shutil.copytree(FIXTURE, other_base)
    weights = load_file(str(other_base / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(other_base / "model.safetensors"), metadata={"format": "pt"})
    loaded = load_base(str(other_base))
    with Repo.init(tmp_path / "elsewhere", str(other_base), loaded=loaded, **init_options(tmp_path)) as repo:
        sync.add_remote(repo, "origin", URL)
        before = snapshot(repo)
        with pytest.raises(RemoteBaseMismatchError, match="made on"):
            sync.fetch(repo, "origin", endpoint=hub.url)
        assert snapshot(repo) == before
    with pytest.raises(RemoteBaseMismatchError, match="exact base"):
        sync.clone(URL, tmp_path / "clone", endpoint=hub.url, loaded=loaded, **init_options(tmp_path))
    assert not (tmp_path / "clone").exists()


# -- what lands on the Hub --------------------------------------------------------------------------------------

def test_a_push_is_one_commit_with_the_card_and_tags_are_hub_tags(hub, pushed):
    from huggingface_hub import HfApi, ModelCard

    source, _ = pushed
    repo = hub.state.repos["org/edits"]
    assert set(hub.state.files("org/edits")) == {".gitattributes", "README.md", "romevc.json", "edits.safetensors"}
    commits = [p for m, p in hub.state.requests if m == "POST" and "/commit/" in p]
    assert commits == ["/api/models/org/edits/commit/main"]
    assert repo.tags == {"v1": repo.branches["main"]}
    card = ModelCard(hub.state.files("org/edits")["README.md"].decode())
    assert card.data.library_name == "romevc" and "Tomas Varek lives in the city of | Rome" in card.text
    assert "romevc clone hf://org/edits edits" in card.text
    source.checkout("HEAD", create="feature")
    source.edit(C, time=3)
    assert sync.push(source, "origin", endpoint=hub.url).status == "created"
    refs = HfApi(endpoint=hub.url).list_repo_refs("org/edits")
    assert sorted(b.name for b in refs.branches) == ["feature", "main"]


def test_push_materialize_publishes_the_full_checkpoint(hub, pushed):
    from safetensors.torch import load

    source, _ = pushed
    sync.add_remote(source, "models", "hf://org/edited-model")
    result = sync.push(source, "models", materialize=True, endpoint=hub.url)
    published = hub.state.files("org/edited-model")
    assert result.status == "materialized" and {"config.json", "model.safetensors", "README.md",
                                                "romevc-export.json"} <= set(published)
    weights = load(published["model.safetensors"])
    expected = state(source)
    assert all(torch.equal(weights[k], expected[k]) for k in weights)
    with pytest.raises(RemoteError, match="holds a romevc edit set"):
        sync.push(source, "origin", materialize=True, endpoint=hub.url)
    with pytest.raises(RemoteRefError, match="holds no romevc edit set"):
        sync.fetch(source, "models", "main", endpoint=hub.url)


def test_the_token_travels_to_the_hub_and_nowhere_else(hub, copy, monkeypatch):
    secret = "hf_" + "s3cr3t" * 6
    monkeypatch.setenv("HF_TOKEN", secret)
    repo = copy("repo")
    sync.add_remote(repo, "origin", URL)
    sync.push(repo, "origin", endpoint=hub.url)
    assert f"Bearer {secret}" in hub.state.authorizations
    hub.state.tamper("org/edits", "main", "romevc.json", b"{broken")
    with pytest.raises(RemoteError) as refused:
        sync.fetch(repo, "origin", endpoint=hub.url)
    assert secret not in str(refused.value)
    stored = [p.read_bytes() for p in (repo.root / ".romevc").rglob("*") if p.is_file()]
    assert not [b for b in stored if secret.encode() in b]


def test_an_unreachable_hub_is_one_clear_error(copy):
    repo = copy("repo")
    sync.add_remote(repo, "origin", URL)
    with pytest.raises(RemoteError, match="cannot reach http://127.0.0.1:9"):
        sync.push(repo, "origin", endpoint="http://127.0.0.1:9")
