"""Hostile files and remotes: each is refused with a clear ``RomevcError`` before anything
reaches the model or the ledger.

A victim repository on the tiny GPT-2 (edits A, B) is offered the edit set of a source
repository (A, B, C) in every broken or malicious form we could think of:

- ``edits.safetensors`` truncated, bit-flipped, with a header that lies about its offsets
  (beyond the file, overlapping, leaving gaps or unclaimed bytes), declaring a memory bomb of
  10¹² elements (refused from the header alone: safetensors is never called), or replaced by a
  pickle, a ``torch.save`` archive or a ``.npy`` file under the safetensors name;
- a folder whose ``romevc.json`` or ``edits.safetensors`` is a symlink out of it, or that holds a
  pickle beside the edit set;
- a forged edit set that borrows the victim's base fingerprint but was made for another base,
  another architecture, or another hidden size;
- the same files served by the Hub (``tests/hub_server.py``, which can tamper with a stored file
  and plant names a real Hub refuses, like ``../romevc.json``) and by a git remote (which can
  hold symlinks), through fetch and clone;
- the statistics cache and the base checkpoint's own weight files, corrupted the same ways.

Every refusal checks that the victim's ledger (every row of every table) and the model's
weights are exactly as before. The refusals are counted and printed at the end (``-s``).
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_server import HubServer

from romevc.errors import ModelLoadError, RomevcError
from romevc.ledger import CommitRecord, EditRecord
from romevc.remotes import sync
from romevc.remotes.editset import (
    MANIFEST,
    TENSORS,
    BaseRef,
    EditSet,
    Manifest,
    write_editset,
    write_files,
)
from romevc.remotes.errors import (
    EditSetHashError,
    InvalidEditSetError,
    RemoteBaseMismatchError,
    UnsafeEditSetError,
)
from romevc.repo import Repo
from tests.fault_report import report as report_counts
from tests.ledger_dump import dump as ledger_rows
from tests.tiny_facts import AUTHOR, FIXTURE, A, B, C

pytestmark = pytest.mark.usefixtures("one_thread")

URL = "hf://org/edits"
REFUSED: collections.Counter[str] = collections.Counter()  # what was refused -> how many times


# -- the victim, the source and what they exchange -----------------------------------------------------------

@dataclass
class World:
    root: Path
    tiny: object  # the LoadedModel every repository here shares
    victim: Repo  # main: A, B
    source: Repo  # main: A, B, C (what the victim is offered)
    good: Path  # the source's main as a published edit-set folder
    hub: HubServer
    bare: Path  # a bare git repository holding the same edit set

    @property
    def tensors(self) -> bytes:
        return (self.good / TENSORS).read_bytes()

    @property
    def manifest(self) -> bytes:
        return (self.good / MANIFEST).read_bytes()


def _init(root: Path, name: str, tiny) -> Repo:
    return Repo.init(root / name, str(FIXTURE), loaded=tiny, author=AUTHOR, stats_corpus=str(FIXTURE / "corpus.txt"),
                     stats_tokens=3000, stats_root=str(root / "stats"), time=0)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=Mallory", "-c", "user.email=m@example.org", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny, one_thread):
    from huggingface_hub import constants

    root = tmp_path_factory.mktemp("hostile")
    victim = _init(root, "victim", tiny)
    victim.edit(A, time=1)
    victim.edit(B, time=2)
    shutil.copytree(root / "victim", root / "source")
    source = Repo.open(root / "source", loaded=tiny)
    source.edit(C, time=3)
    good = write_editset(source, ["main"], root / "good")
    subprocess.run(["git", "init", "-q", "--bare", str(root / "remote.git")], check=True)
    with pytest.MonkeyPatch.context() as mp, HubServer() as hub:
        mp.setattr(constants, "HF_HUB_OFFLINE", False)  # the test Hub is on 127.0.0.1
        for name, url in (("hub", URL), ("git", str(root / "remote.git"))):
            sync.add_remote(source, name, url)
            sync.add_remote(victim, name, url)
            sync.push(source, name, endpoint=hub.url if name == "hub" else None)
        git(root, "clone", "-q", "--branch", "main", str(root / "remote.git"), str(root / "mallory"))
        yield World(root, tiny, victim, source, good, hub, root / "remote.git")
    victim.close()
    source.close()


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    report_counts("hostile input", f"hostile inputs refused: {sum(REFUSED.values())}",
           *(f"  {n:>3}  {what}" for what, n in sorted(REFUSED.items())))


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def refuse(world: World, what: str, error: type[RomevcError], match: str, action) -> None:
    """``action()`` raises ``error`` (matching ``match``) and leaves the victim's ledger and weights alone."""
    rows, weights = ledger_rows(world.victim.root), weights_digest(world.tiny.model)
    with pytest.raises(error, match=match) as refused:
        action()
    assert "\n" not in str(refused.value)
    assert ledger_rows(world.victim.root) == rows, f"{what}: the ledger changed"
    assert weights_digest(world.tiny.model) == weights, f"{what}: the weights changed"
    REFUSED[what] += 1


def folder_with(world: World, name: str, *, tensors: bytes | None = None, manifest: bytes | None = None) -> Path:
    folder = world.root / "offered" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / TENSORS).write_bytes(world.tensors if tensors is None else tensors)
    (folder / MANIFEST).write_bytes(world.manifest if manifest is None else manifest)
    return folder


# -- hostile safetensors -------------------------------------------------------------------------------------------

def split(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(header: dict | bytes, body: bytes) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


def by_offset(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def _edit(data: bytes, change) -> bytes:
    header, body = split(data)
    body = change(header, body)
    return join(header, body)


def _beyond(header, body):  # the last tensor claims twice its rows: offsets past the end of the file
    last = header[by_offset(header)[-1]]
    begin, end = last["data_offsets"]
    last["shape"] = [2 * last["shape"][0], *last["shape"][1:]]
    last["data_offsets"] = [begin, begin + 2 * (end - begin)]
    return body


def _overlap(header, body):  # the second tensor starts 4 bytes inside the first
    for name in by_offset(header)[1:]:
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [begin - 4, end - 4]
    return body + b""


def _gap(header, body):  # 16 bytes nobody claims before the last tensor
    last = header[by_offset(header)[-1]]
    begin, end = last["data_offsets"]
    last["data_offsets"] = [begin + 16, end + 16]
    return body[:begin] + bytes(16) + body[begin:]


def _bomb(header, body):  # 10^12 float32 values declared, offsets to match, in a file of a few KB
    last = header[by_offset(header)[-1]]
    begin = last["data_offsets"][0]
    last["shape"], last["data_offsets"] = [10**6, 10**6], [begin, begin + 4 * 10**12]
    return body


def _bomb_lying(header, body):  # 10^12 values declared over the few bytes the offsets really span
    header[by_offset(header)[0]]["shape"] = [10**6, 10**6]
    return body


def _dtype(new):
    def change(header, body):
        header[by_offset(header)[0]]["dtype"] = new
        return body
    return change


def _torch_save() -> bytes:
    buffer = io.BytesIO()
    torch.save({"u": torch.zeros(16)}, buffer)
    return buffer.getvalue()


def _npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(16, np.float32))
    return buffer.getvalue()


def _duplicate_names(data: bytes) -> bytes:
    header, body = split(data)
    first = by_offset(header)[0]
    text = json.dumps(header)
    entry = json.dumps({first: header[first]})[1:-1]
    return join(("{" + entry + ", " + text[1:]).encode(), body)


HOSTILE_TENSORS = {  # name -> (bytes from the good file, error, message)
    "truncated": (lambda d: d[:-9], InvalidEditSetError, "truncated"),
    "truncated inside the header": (lambda d: d[:40], InvalidEditSetError, "header claims"),
    "cut to 4 bytes": (lambda d: d[:4], InvalidEditSetError, "shorter than the 8-byte header length"),
    "empty": (lambda d: b"", InvalidEditSetError, "shorter than the 8-byte header length"),
    "bit flipped in a tensor": (lambda d: _flip(d, len(d) - 3, 5), EditSetHashError, "does not hash to its id"),
    "bit flipped in the header length": (lambda d: _flip(d, 3), InvalidEditSetError, "header claims"),
    "bit flipped in the header JSON": (lambda d: _flip(d, 9, 6), InvalidEditSetError, "not valid JSON"),
    "offsets beyond the file": (lambda d: _edit(d, _beyond), InvalidEditSetError, "beyond the end of the file"),
    "overlapping offsets": (lambda d: _edit(d, _overlap), InvalidEditSetError, "overlaps the tensor before it"),
    "a gap between tensors": (lambda d: _edit(d, _gap), InvalidEditSetError, "leaves a gap of 16 bytes"),
    "unclaimed bytes at the end": (lambda d: d + bytes(16), InvalidEditSetError, "unclaimed bytes"),
    "memory bomb": (lambda d: _edit(d, _bomb), InvalidEditSetError, "beyond the end of the file"),
    "memory bomb over small offsets": (lambda d: _edit(d, _bomb_lying), InvalidEditSetError,
                                       r"declares F32\[1000000, 1000000\] \(4000000000000 bytes\)"),
    "a pickle renamed": (lambda d: pickle.dumps({"u": [0.0] * 16}, protocol=4), InvalidEditSetError,
                         "it is a pickle"),
    "a torch.save archive renamed": (lambda d: _torch_save(), InvalidEditSetError, "zip archive, as torch.save"),
    "a .npy file renamed": (lambda d: _npy(), InvalidEditSetError, "header claims"),
    "duplicate tensor names": (_duplicate_names, InvalidEditSetError, "names .* twice"),
    "an unknown dtype": (lambda d: _edit(d, _dtype("Q4")), InvalidEditSetError, "unknown dtype 'Q4'"),
    "int32 posing as float32": (lambda d: _edit(d, _dtype("I32")), InvalidEditSetError, "expected float32"),
    "metadata that is not text": (lambda d: _edit(d, lambda h, b: (h.update(__metadata__={"format": 1}), b)[1]),
                                  InvalidEditSetError, "__metadata__ is not an object of strings"),
}


@pytest.fixture()
def no_tensor_reads(monkeypatch):
    """``no_tensor_reads()``: from now on, safetensors itself must not be asked to read anything
    (a file whose header romevc refused is never handed over)."""
    import safetensors
    import safetensors.numpy
    import safetensors.torch

    def refuse_to_read(*args, **kwargs):
        raise AssertionError("safetensors was asked to read a file romevc should have refused from its header")

    def guard() -> None:
        for module, name in ((safetensors, "safe_open"), (safetensors.numpy, "load"), (safetensors.torch, "load"),
                             (safetensors.numpy, "load_file"), (safetensors.torch, "load_file")):
            monkeypatch.setattr(module, name, refuse_to_read)
    return guard


def test_the_untouched_edit_set_applies(world, tmp_path):
    """The control: what the hostile variants start from is accepted, so each refusal is the variant's."""
    shutil.copytree(world.victim.root, tmp_path / "copy")
    with Repo.open(tmp_path / "copy", loaded=world.tiny) as copy:
        applied = copy.apply(folder_with(world, "untouched"))
        assert [e.fact for e in applied.edits] == [C.fact()]


@pytest.mark.parametrize("name", [n for n, v in HOSTILE_TENSORS.items() if v[1] is not EditSetHashError])
def test_a_hostile_tensors_file_is_refused_from_its_header(world, name, no_tensor_reads):
    change, error, match = HOSTILE_TENSORS[name]
    bad = change(world.tensors)
    folder = folder_with(world, name, tensors=bad)
    no_tensor_reads()
    tracemalloc.start()
    try:
        refuse(world, f"apply: {name}", error, match, lambda: world.victim.apply(folder))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"refusing {name} took {peak} bytes"  # nothing near the declared sizes


def test_a_bit_flipped_tensor_is_a_hash_mismatch(world):
    change, error, match = HOSTILE_TENSORS["bit flipped in a tensor"]
    folder = folder_with(world, "bit flipped", tensors=change(world.tensors))
    refuse(world, "apply: bit flipped in a tensor", error, match, lambda: world.victim.apply(folder))


# -- folders that point outside themselves -----------------------------------------------------------------------

def test_links_out_of_the_folder_and_pickles_beside_it_are_refused(world):
    outside = world.root / "outside"
    outside.mkdir(exist_ok=True)
    (outside / MANIFEST).write_bytes(world.manifest)
    (outside / TENSORS).write_bytes(world.tensors)

    folder = folder_with(world, "absolute link")
    (folder / MANIFEST).unlink()
    os.symlink(outside / MANIFEST, folder / MANIFEST)  # absolute
    refuse(world, "apply: romevc.json links out (absolute)", UnsafeEditSetError, "symlink",
           lambda: world.victim.apply(folder))

    folder = folder_with(world, "relative link")
    (folder / TENSORS).unlink()
    os.symlink(Path("..") / ".." / "outside" / TENSORS, folder / TENSORS)  # ../../outside/edits.safetensors
    assert (folder / TENSORS).resolve() == (outside / TENSORS).resolve()
    refuse(world, "apply: edits.safetensors links out (..)", UnsafeEditSetError, "symlink",
           lambda: world.victim.apply(folder))

    folder = folder_with(world, "linked folder")
    os.symlink("/", folder / "extra")
    refuse(world, "apply: a folder links to /", UnsafeEditSetError, "symlink", lambda: world.victim.apply(folder))

    folder = folder_with(world, "pickle beside")
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": 1}))
    refuse(world, "apply: a pickle beside the edit set", UnsafeEditSetError, "pickle",
           lambda: world.victim.apply(folder))


# -- edit sets made for another model -------------------------------------------------------------------------------

def _with_metadata(data: bytes, **metadata: str) -> bytes:
    header, body = split(data)
    header["__metadata__"] = {**header["__metadata__"], **metadata}
    return join(header, body)


def other_fingerprint(world: World) -> tuple[bytes, bytes]:
    """The good set, consistently re-labelled as made on another base (manifest and tensors agree)."""
    manifest = json.loads(world.manifest)
    manifest["base"]["fingerprint"] = "0" * 64
    return json.dumps(manifest).encode(), _with_metadata(world.tensors, base_fingerprint="0" * 64)


def forged(world: World, *, module_template: str, layout: str, architecture: str, d_in: int, d_out: int,
           folder: Path) -> Path:
    """A self-consistent edit set (every id hashes) that borrows the victim's base fingerprint."""
    info = world.victim.info
    base = BaseRef(info.base_id, info.revision, info.base_fingerprint, architecture, info.dtype, module_template,
                   layout)
    rng = np.random.default_rng(0)
    edit = EditRecord.create(
        request={"prompt": "{} lives in the city of", "subject": "Mallory", "target_new": "Nowhere"},
        method="r-rome", hparams={"layer": 1}, seed=0, templates=["{}"], layer=1,
        module=module_template.format(1), layout=layout, rank=1,
        u=rng.standard_normal(d_in).astype("<f4").tobytes(), v=rng.standard_normal(d_out).astype("<f4").tobytes(),
        stats_id=None, weights_fingerprint=None, author="Mallory", time=9)
    # On the victim's own history where the modules agree; alone where they cannot.
    same_modules = module_template == info.module_template
    history = list(reversed(world.victim.ledger.log("main"))) if same_modules else []
    previous = world.victim.records("main") if same_modules else []
    commit = CommitRecord.create(parents=[c.id for c in history[-1:]], edit_ids=[e.id for e in previous] + [edit.id],
                                 message="a friendly update", author="Mallory", time=9, tz=0)
    editset = EditSet(Manifest(base, commit.id, {"main": commit.id}, {}, "0"), [*previous, edit], [*history, commit])
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_files(editset, folder, card=False)
    return folder


def wider(world: World, folder: Path) -> Path:
    """An edit of the right module with another hidden size (7 → 5 instead of the tiny model's)."""
    info = world.victim.info
    return forged(world, module_template=info.module_template, layout=info.layout, architecture=info.architecture,
                  d_in=7, d_out=5, folder=folder)


def llama(world: World, folder: Path) -> Path:
    return forged(world, module_template="model.layers.{}.mlp.down_proj", layout="out_in", architecture="llama",
                  d_in=16, d_out=8, folder=folder)


def test_edit_sets_for_another_base_architecture_or_width_are_refused(world):
    manifest, tensors = other_fingerprint(world)
    folder = folder_with(world, "other base", manifest=manifest, tensors=tensors)
    refuse(world, "apply: another base fingerprint", RemoteBaseMismatchError, "was made on",
           lambda: world.victim.apply(folder))
    folder = llama(world, world.root / "offered" / "llama")
    refuse(world, "apply: another architecture", RemoteBaseMismatchError, "made for 'llama/",
           lambda: world.victim.apply(folder))
    folder = wider(world, world.root / "offered" / "wider")
    refuse(world, "apply: another hidden size", RemoteBaseMismatchError, r"as a \[7, 5\] weight",
           lambda: world.victim.apply(folder))


# -- remotes that serve all of the above -------------------------------------------------------------------------

def fetch(world: World, name: str):
    """Fetching remote ``name`` into the victim (every remote here is on the test Hub but ``git``)."""
    return lambda: sync.fetch(world.victim, name, endpoint=None if name == "git" else world.hub.url)


def serve_on_hub(world: World, files: dict[str, bytes]) -> None:
    """A compromised host: the files of the pushed revision replaced in place."""
    for path in (MANIFEST, TENSORS):
        world.hub.state.tamper("org/edits", "main", path, files.get(path, (world.good / path).read_bytes()))


@pytest.mark.parametrize("name", list(HOSTILE_TENSORS))
def test_the_hub_serving_hostile_tensors_is_refused(world, name, no_tensor_reads):
    change, error, match = HOSTILE_TENSORS[name]
    if error is not EditSetHashError:  # a hash is checked on tensors read, once their header passed
        no_tensor_reads()
    serve_on_hub(world, {TENSORS: change(world.tensors)})
    try:
        refuse(world, f"hub fetch: {name}", error, match, fetch(world, "hub"))
    finally:
        serve_on_hub(world, {})


def test_the_hub_serving_names_out_of_the_folder_or_another_base_is_refused(world, tmp_path):
    for i, (planted, match) in enumerate([("../romevc.json", "'..'"), ("/etc/romevc.json", "absolute path"),
                                          ("a/../../edits.safetensors", "'..'"), ("edits.safetensors.bin", "pickle"),
                                          ("model.pt", "pickle")]):
        repo_id = f"org/planted-{i}"
        sync.add_remote(world.source, f"planted-{i}", f"hf://{repo_id}")
        sync.push(world.source, f"planted-{i}", endpoint=world.hub.url)
        world.hub.state.plant(repo_id, "main", {planted: world.manifest})
        sync.add_remote(world.victim, f"planted-{i}", f"hf://{repo_id}")
        try:
            requests = len(world.hub.state.requests)
            refuse(world, f"hub fetch: a file named {planted}", UnsafeEditSetError, match,
                   fetch(world, f"planted-{i}"))
            assert not [p for _, p in world.hub.state.requests[requests:] if "/resolve/" in p]  # nothing downloaded
        finally:
            world.victim.ledger.remove_remote(f"planted-{i}")
    manifest, tensors = other_fingerprint(world)
    for what, files, match in [
        ("another base fingerprint", {MANIFEST: manifest, TENSORS: tensors}, "was made on"),
        ("another architecture", _files(llama(world, tmp_path / "llama")), "made for 'llama/"),
        ("another hidden size", _files(wider(world, tmp_path / "wider")), r"as a \[7, 5\] weight"),
    ]:
        serve_on_hub(world, files)
        try:
            refuse(world, f"hub fetch: {what}", RemoteBaseMismatchError, match, fetch(world, "hub"))
            refuse(world, f"hub clone: {what}", RemoteBaseMismatchError, match,
                   lambda: sync.clone(URL, tmp_path / "clone", endpoint=world.hub.url, loaded=world.tiny,
                                      stats_root=str(tmp_path / "stats")))
            assert not (tmp_path / "clone").exists()
        finally:
            serve_on_hub(world, {})


def _files(folder: Path) -> dict[str, bytes]:
    return {MANIFEST: (folder / MANIFEST).read_bytes(), TENSORS: (folder / TENSORS).read_bytes()}


def commit_on_git(world: World, change) -> None:
    """Another user commits ``change(work)`` on top of the git remote's main."""
    work = world.root / "mallory"
    git(work, "pull", "-q", "--ff-only", "origin", "main")
    for path in (MANIFEST, TENSORS):
        (work / path).unlink(missing_ok=True)
        shutil.copy(world.good / path, work / path)
    change(work)
    git(work, "add", "-A")
    git(work, "commit", "-q", "--allow-empty", "-m", "innocent update")
    git(work, "push", "-q", "origin", "HEAD:main")


GIT_CASES = {
    "truncated": (lambda w, work: (work / TENSORS).write_bytes(w.tensors[:-9]), InvalidEditSetError, "truncated"),
    "memory bomb": (lambda w, work: (work / TENSORS).write_bytes(_edit(w.tensors, _bomb)), InvalidEditSetError,
                    "beyond the end of the file"),
    "a torch.save archive renamed": (lambda w, work: (work / TENSORS).write_bytes(_torch_save()),
                                     InvalidEditSetError, "zip archive"),
    "bit flipped in a tensor": (lambda w, work: (work / TENSORS).write_bytes(_flip(w.tensors, len(w.tensors) - 3, 5)),
                                EditSetHashError, "does not hash to its id"),
    "romevc.json links out": (lambda w, work: ((work / MANIFEST).unlink(), os.symlink("/etc/passwd", work / MANIFEST)),
                              UnsafeEditSetError, "symlink"),
    "edits.safetensors links out (..)": (lambda w, work: ((work / TENSORS).unlink(),
                                                          os.symlink("../outside/edits.safetensors", work / TENSORS)),
                                         UnsafeEditSetError, "symlink"),
    "another hidden size": (lambda w, work: [(work / p).write_bytes(b) for p, b in
                                             _files(wider(w, w.root / "git-wider")).items()],
                            RemoteBaseMismatchError, r"as a \[7, 5\] weight"),
}


@pytest.mark.parametrize("name", list(GIT_CASES))
def test_a_git_remote_serving_hostile_files_is_refused(world, name):
    change, error, match = GIT_CASES[name]
    commit_on_git(world, lambda work: change(world, work))
    refuse(world, f"git fetch: {name}", error, match, fetch(world, "git"))


# -- the caches and the base's own files ---------------------------------------------------------------------------

def test_a_hostile_statistics_file_is_never_loaded_and_is_recomputed(world, tmp_path, caplog, no_tensor_reads):
    from romevc.editing.stats import StatsCache

    def cache(root: Path) -> StatsCache:
        return StatsCache(root=root, corpus=str(FIXTURE / "corpus.txt"), n_tokens=3000, progress=False)

    model, tokenizer = world.tiny.model, world.tiny.tokenizer
    clean = cache(tmp_path / "clean")
    expected = clean.get(model, tokenizer, 1)
    stored = clean.path(clean.key(model, 1)).read_bytes()
    header, _ = split(stored)
    d = expected.mom2.shape[0]
    variants = {
        "truncated": stored[:-5],
        "memory bomb": _edit(stored, _bomb),
        "a pickle renamed": pickle.dumps(expected.mom2.numpy()),
        "C of the wrong shape": join({**header, "mom2": {"dtype": "F64", "shape": [d - 1, d - 1],
                                                         "data_offsets": [0, 8 * (d - 1) ** 2]},
                                      "count": {"dtype": "I64", "shape": [1], "data_offsets": [8 * (d - 1) ** 2,
                                                                                              8 * (d - 1) ** 2 + 8]}},
                                     bytes(8 * (d - 1) ** 2) + (5).to_bytes(8, "little")),
        "a NaN in C": _edit(stored, lambda h, b: _nan_in(h, b)),
    }
    header_level = ("truncated", "memory bomb", "a pickle renamed")  # refused before safetensors reads a byte
    for what, data in sorted(variants.items(), key=lambda kv: kv[0] in header_level):
        if what in header_level:
            no_tensor_reads()
        hostile = cache(tmp_path / what.replace(" ", "-"))
        path = hostile.path(hostile.key(model, 1))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        weights = weights_digest(model)
        caplog.clear()
        with caplog.at_level("WARNING", logger="romevc.editing.stats"):
            moment = hostile.get(model, tokenizer, 1)
        assert torch.equal(moment.mom2, expected.mom2) and moment.count == expected.count  # recomputed, not loaded
        assert "recomputing" in caplog.text and weights_digest(model) == weights
        REFUSED[f"statistics cache: {what}"] += 1


def _nan_in(header: dict, body: bytes) -> bytes:
    begin = header["mom2"]["data_offsets"][0]
    return body[:begin] + np.float64("nan").tobytes() + body[begin + 8:]


@pytest.mark.parametrize("what, change, match", [
    ("truncated", lambda d: d[:-100], "truncated"),
    ("memory bomb", lambda d: _edit(d, _bomb), "beyond the end of the file"),
    ("a pickle renamed", lambda d: pickle.dumps({"transformer.h.0.mlp.c_proj.weight": [0.0]}), "it is a pickle"),
    ("overlapping offsets", lambda d: _edit(d, _overlap), "overlaps"),
])
def test_a_hostile_base_checkpoint_is_refused_before_transformers_reads_it(world, tmp_path, monkeypatch, what, change,
                                                                          match):
    from transformers import AutoModelForCausalLM

    from romevc.model import load_base

    base = tmp_path / "base"
    shutil.copytree(FIXTURE, base)
    (base / "model.safetensors").write_bytes(change((FIXTURE / "model.safetensors").read_bytes()))

    def never(*args, **kwargs):
        raise AssertionError("transformers was asked to load a checkpoint romevc should have refused")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", never)
    refuse(world, f"base checkpoint: {what}", ModelLoadError, match, lambda: load_base(str(base)))


def test_every_kind_of_hostile_input_was_refused():
    kinds = ("apply:", "hub fetch:", "hub clone:", "git fetch:", "statistics cache:", "base checkpoint:")
    missing = [k for k in kinds if not any(what.startswith(k) for what in REFUSED)]
    if missing:
        pytest.skip(f"not every group ran in this session (missing {', '.join(missing)})")
    assert sum(REFUSED.values()) >= 60, dict(REFUSED)
