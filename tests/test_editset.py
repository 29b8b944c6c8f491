"""The published edit-set format: a faithful round trip, and every refusal on the way in.

Synthetic edits in a bare ledger (no model), so these run in well under a second each.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from romevc.ledger import CommitRecord, EditRecord, Ledger, RepoInfo
from romevc.remotes.editset import (
    CARD, MANIFEST, TENSORS, BaseRef, check_base, check_file_name, collect, read_editset, read_manifest,
    write_editset,
)
from romevc.remotes.errors import (
    EditSetHashError, EditSetVersionError, InvalidEditSetError, RemoteBaseMismatchError, UnsafeEditSetError,
)
from romevc.porcelain.errors import EditSetError

INFO = RepoInfo(base_id="org/tiny-gpt2", revision="0123abcd" * 5, architecture="gpt2", dtype="float32",
                base_fingerprint="f" * 64, module_template="transformer.h.{}.mlp.c_proj", layout="in_out")
AUTHOR = "Ada <ada@example.org>"


def make_edit(i: int, layer: int = 1, rank: int = 1, d_in: int = 16, d_out: int = 8) -> EditRecord:
    rng = np.random.default_rng(i)
    return EditRecord.create(
        request={"prompt": "{} lives in the city of", "subject": f"Person {i}", "target_new": f"City {i}"},
        method="r-rome", hparams={"layer": layer}, seed=i, templates=["{}", "Hello. {}"], layer=layer,
        module=INFO.module_template.format(layer), layout="in_out", rank=rank,
        u=rng.standard_normal(rank * d_in).astype("<f4").tobytes(),
        v=rng.standard_normal(rank * d_out).astype("<f4").tobytes(),
        stats_id="s" * 64, weights_fingerprint=None, author=AUTHOR, time=i, notes={"n": i},
    )


@pytest.fixture()
def ledger(tmp_path):
    """main: e0 → e0+e1 (tag v1) → e0+e1+e2 (e1 rank two, e2 on layer 2); side: e0+e3."""
    ledger = Ledger.create(f"sqlite:///{tmp_path / 'ledger.db'}", INFO)
    edits = [make_edit(0), make_edit(1, rank=2), make_edit(2, layer=2), make_edit(3)]
    ledger.put_edits(edits)
    parent, sets = None, [[0], [0, 1], [0, 1, 2]]
    for t, s in enumerate(sets):
        c = CommitRecord.create(parents=[parent] if parent else [], edit_ids=[edits[i].id for i in s],
                                message=f"commit {t}", author=AUTHOR, time=t, tz=3600)
        ledger.commit_on_branch("main", c)
        if t == 1:
            ledger.update_ref("refs/tags/v1", c.id, None)
            first = c
        parent = c.id
    side = CommitRecord.create(parents=[first.id], edit_ids=[edits[0].id, edits[3].id], message="side",
                               author=AUTHOR, time=9)
    ledger.put_commit(side)
    ledger.update_ref("refs/heads/side", side.id, None)
    yield ledger
    ledger.close()


@pytest.fixture()
def folder(ledger, tmp_path) -> Path:
    return write_editset(ledger, ["main"], tmp_path / "editset")


def rewrite_manifest(folder: Path, change) -> None:
    data = json.loads((folder / MANIFEST).read_text())
    change(data)
    (folder / MANIFEST).write_text(json.dumps(data))


def rewrite_tensors(folder: Path, change) -> None:
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(folder / TENSORS), framework="numpy") as f:
        meta = f.metadata()
    tensors = load_file(str(folder / TENSORS))
    change(tensors, meta)
    save_file(tensors, str(folder / TENSORS), metadata=meta)


# -- the round trip ------------------------------------------------------------------------------------------

def test_write_then_read_gives_back_the_same_records(ledger, folder):
    assert sorted(p.name for p in folder.iterdir()) == [CARD, TENSORS, MANIFEST]
    editset = read_editset(folder)
    main = ledger.resolve("main")
    m = editset.manifest
    assert m.head == main and m.branches == {"main": main} and m.tags == {"v1": ledger.resolve("v1")}
    assert m.base == BaseRef.of(INFO) and m.format_version == 1
    assert [c.id for c in editset.commits] == [c.id for c in reversed(ledger.log("main"))]
    stored = ledger.edits_of(main)
    assert [e.id for e in editset.edits] == [e.id for e in stored]
    for got, want in zip(editset.edits, stored):
        assert (got.u, got.v, got.rank, got.notes, got.author, got.templates) == \
               (want.u, want.v, want.rank, want.notes, want.author, want.templates)
    assert [e.id for e in editset.edits_of(main)] == [e.id for e in stored]
    assert "side" not in m.branches and len(editset.edits) == 3  # e3 only lives on side


def test_the_tensors_and_the_card(ledger, folder):
    from huggingface_hub import ModelCard
    from safetensors import safe_open

    with safe_open(str(folder / TENSORS), framework="numpy") as f:
        meta = f.metadata()
        e1 = ledger.edits_of(ledger.resolve("main"))[1]
        assert f.get_tensor(f"{e1.id}.u").shape == (2, 16) and f.get_tensor(f"{e1.id}.v").dtype == np.float32
    assert meta["format"] == "romevc-editset" and meta["format_version"] == "1"
    assert meta["base"] == INFO.base_id and meta["base_fingerprint"] == INFO.base_fingerprint
    card = ModelCard.load(folder / CARD)
    assert card.data.base_model == "org/tiny-gpt2" and card.data.base_model_relation == "adapter"
    assert card.data.library_name == "romevc" and card.data.tags == ["romevc", "model-editing", "rome"]
    assert "| Person 2 lives in the city of | City 2 | - | 2 | r-rome |" in card.text


def test_several_refs_and_a_commit_id(ledger, tmp_path):
    out = write_editset(ledger, ["side", "main"], tmp_path / "both")
    m = read_manifest(out)
    assert m.head == ledger.resolve("side") and set(m.branches) == {"side", "main"}
    assert len(read_editset(out).edits) == 4
    detached = collect(ledger, [ledger.resolve("main~1")[:10]])
    assert detached.manifest.branches == {} and detached.manifest.tags == {"v1": ledger.resolve("main~1")}


def test_a_target_that_holds_files_is_refused_unless_forced(ledger, folder):
    from romevc.porcelain.errors import ExportError

    with pytest.raises(ExportError, match="--force"):
        write_editset(ledger, ["main"], folder)
    write_editset(ledger, ["side"], folder, force=True)
    assert read_manifest(folder).head == ledger.resolve("side")
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


# -- refusals ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, why", [
    ("../romevc.json", "'..'"), ("a/../../x.json", "'..'"), ("/etc/x.json", "absolute"),
    ("C:\\x.json", "absolute"), ("model.bin", "pickle"), ("weights.pt", "pickle"), ("x.pkl", "pickle"),
    ("notes.txt", "not part of the format"), ("./x.json", "odd"),
])
def test_unsafe_names_are_refused(name, why):
    with pytest.raises(UnsafeEditSetError, match=why):
        check_file_name(name)


def test_safe_names_pass():
    for name in ("romevc.json", "edits.safetensors", "README.md", ".gitattributes", "extra/meta.json"):
        check_file_name(name)


def test_a_pickle_beside_the_edit_set_is_refused(folder):
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UnsafeEditSetError, match="pickle"):
        read_editset(folder)


def test_symlinks_are_refused(folder, tmp_path):
    real = tmp_path / "elsewhere.json"
    real.write_text("{}")
    os.symlink(real, folder / "link.json")
    with pytest.raises(UnsafeEditSetError, match="symlink"):
        read_editset(folder)
    (folder / "link.json").unlink()
    os.symlink(tmp_path, folder / "linked-folder")
    with pytest.raises(UnsafeEditSetError, match="symlink"):
        read_editset(folder)


def test_a_changed_tensor_is_a_hash_mismatch(folder):
    def change(tensors, meta):
        key = sorted(tensors)[0]
        tensors[key] = tensors[key].copy()
        tensors[key][0, 0] += 1e-3
    rewrite_tensors(folder, change)
    with pytest.raises(EditSetHashError, match="altered"):
        read_editset(folder)


@pytest.mark.parametrize("change", [
    lambda d: d["commits"][0].update(message="rewritten history"),
    lambda d: d["edits"][0]["request"].update(target_new="Somewhere else"),
    lambda d: d["edits"][1].update(layer=1, hparams={"layer": 3}),
], ids=["commit-message", "edit-request", "edit-hparams"])
def test_changed_metadata_is_a_hash_mismatch(folder, change):
    rewrite_manifest(folder, change)
    with pytest.raises(EditSetHashError, match="does not hash to its id"):
        read_editset(folder)


def test_unknown_format_versions_are_refused(folder):
    rewrite_manifest(folder, lambda d: d.update(format_version=2))
    with pytest.raises(EditSetVersionError, match="format version 2.*upgrade romevc"):
        read_editset(folder)


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"), ("[]", "not a romevc edit set"), ('{"format": "peft"}', "not a romevc edit set"),
])
def test_malformed_json_is_refused(folder, text, match):
    (folder / MANIFEST).write_text(text)
    with pytest.raises(InvalidEditSetError, match=match):
        read_editset(folder)


@pytest.mark.parametrize("change, match", [
    (lambda d: d["edits"][0].update(seed="seven"), "seed"),
    (lambda d: d["edits"][0].update(seed=True), "boolean"),
    (lambda d: d["edits"][0].pop("request"), "lacks `request`"),
    (lambda d: d["commits"][1].update(edits=["e" * 64]), "does not hold|hash"),
    (lambda d: d.update(branches={"main": "0" * 64}), "does not hold"),
    (lambda d: d.update(edits=d["edits"][:1]), "missing"),
    (lambda d: d["base"].update(fingerprint="0" * 64), "does not belong"),
], ids=["type", "bool", "missing-field", "dangling-edit", "dangling-branch", "tensors-vs-manifest", "other-base"])
def test_inconsistent_edit_sets_are_refused(folder, change, match):
    rewrite_manifest(folder, change)
    with pytest.raises(InvalidEditSetError, match=match):
        read_editset(folder)


def test_wrong_tensor_dtype_and_missing_files(folder):
    rewrite_tensors(folder, lambda t, m: t.update({k: t[k].astype(np.float64) for k in list(t)[:1]}))
    with pytest.raises(InvalidEditSetError, match="float32"):
        read_editset(folder)
    (folder / TENSORS).unlink()
    with pytest.raises(InvalidEditSetError, match="holds no edits.safetensors"):
        read_editset(folder)
    assert issubclass(InvalidEditSetError, EditSetError)  # the porcelain's "bad edit set" catches it


def test_another_base_is_refused(folder):
    other = RepoInfo(**{**INFO.__dict__, "base_fingerprint": "0" * 64})
    with pytest.raises(RemoteBaseMismatchError, match="romevc clone"):
        check_base(read_manifest(folder).base, other)
    check_base(read_manifest(folder).base, INFO)
