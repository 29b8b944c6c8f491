"""The porcelain through its Python API, on the tiny GPT-2 fixture (each edit well under a second).

The central promises: materialising a commit is exact and path-independent, so revert
gives weights bit-identical to never having made the edit; ids are reproducible when
author and time are fixed; every refused change leaves the ledger as it was.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch

from romevc.editing.delta import weights_fingerprint
from romevc.editing.request import EditRequest
from romevc.ledger import LedgerVersionError, NotARepositoryError, UnknownRefError
from romevc.ledger.errors import AmbiguousRefError
from romevc.porcelain.errors import (
    BaseMismatchError, DetachedHeadError, EditSetError, NothingToDoError, RepoError, RepositoryExistsError,
)
from romevc.porcelain.materialize import weights_fingerprint_of
from romevc.repo import Repo
from tests.tiny_facts import AUTHOR, FIXTURE, A, B, C

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def make_repo(tmp_path, tiny):
    """Fresh repositories on the tiny model, sharing one loaded base and one statistics cache."""
    opened = []

    def make(name: str = "repo", base=FIXTURE) -> Repo:
        repo = Repo.init(tmp_path / name, str(base), author=AUTHOR, stats_corpus=str(FIXTURE / "corpus.txt"),
                         stats_tokens=3000, stats_root=str(tmp_path / "stats"),
                         loaded=tiny if base == FIXTURE else None, time=0)
        opened.append(repo)
        return repo

    yield make
    for repo in opened:
        repo.close()


def state(repo: Repo, ref: str | None) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in repo.model(ref).model.state_dict().items()}


def assert_same_weights(x: dict, y: dict) -> None:
    assert x.keys() == y.keys()
    different = [k for k in x if not torch.equal(x[k], y[k])]
    assert not different, f"weights differ in {different[:3]}"


def top(repo: Repo, ref: str, request: EditRequest) -> str:
    return repo.predict(ref, request.text, 1)[0].token


# -- init and open ---------------------------------------------------------------------------------------

def test_init_records_the_base_and_open_finds_it_from_a_subfolder(make_repo, tmp_path, tiny):
    repo = make_repo()
    info = repo.info
    assert info.base_id == str(FIXTURE.resolve()) and info.revision is None
    assert (info.architecture, info.dtype, info.layout) == ("gpt2", "float32", "in_out")
    assert info.module_template == "transformer.h.{}.mlp.c_proj" and info.base_fingerprint == tiny.fingerprint
    assert (tmp_path / "repo" / ".romevc" / "ledger.db").is_file()
    (tmp_path / "repo" / "deep" / "er").mkdir(parents=True)
    with Repo.open(tmp_path / "repo" / "deep" / "er") as again:
        assert again.root == (tmp_path / "repo").resolve()
        assert again.status().head is None and again.status().branch == "main"


def test_init_twice_and_open_outside_are_refused(make_repo, tmp_path):
    make_repo()
    with pytest.raises(RepositoryExistsError):
        Repo.init(tmp_path / "repo", str(FIXTURE))
    with pytest.raises(NotARepositoryError, match="romevc init"):
        Repo.open(tmp_path / "elsewhere")


def test_a_ledger_url_and_a_newer_ledger(make_repo, tmp_path, tiny):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with Repo.init(tmp_path / "a", str(FIXTURE), ledger_url=url, loaded=tiny) as a:
        assert a.ledger.url.database == str(tmp_path / "shared.db")
    with Repo.init(tmp_path / "b", str(FIXTURE), ledger_url=url, loaded=tiny) as b:  # joins the shared ledger
        assert b.info.base_fingerprint == tiny.fingerprint
    with sqlite3.connect(tmp_path / "shared.db") as db:
        db.execute("UPDATE repo SET format_version = 99")
    with pytest.raises(LedgerVersionError, match="newer romevc"):
        Repo.open(tmp_path / "a")


def test_a_folder_joining_a_shared_ledger_gets_a_head_of_its_own(tmp_path, tiny):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with Repo.init(tmp_path / "a", str(FIXTURE), ledger_url=url, loaded=tiny, author=AUTHOR, time=0) as a:
        assert (a.config.worktree, a.ledger.head_name) == (None, "HEAD")
        a.checkout(None, orphan="trunk")  # b starts on the branch the ledger's HEAD is on
    with pytest.raises(BaseMismatchError):  # a refused join leaves no HEAD row behind
        Repo.init(tmp_path / "c", str(FIXTURE), ledger_url=url, loaded=dataclasses.replace(tiny, fingerprint="0" * 64))
    with Repo.init(tmp_path / "b", str(FIXTURE), ledger_url=url, loaded=tiny) as b:
        worktree = b.config.worktree
        assert b.ledger.head_name == f"worktrees/{worktree}/HEAD" and b.status().branch == "trunk"
        assert list(b.ledger.heads()) == ["HEAD", f"worktrees/{worktree}/HEAD"]
        b.checkout(None, orphan="other")
    with Repo.open(tmp_path / "a") as a, Repo.open(tmp_path / "b") as b:
        assert (a.status().branch, b.status().branch) == ("trunk", "other")
    config = tmp_path / "b" / ".romevc" / "config.json"
    config.write_text(config.read_text().replace(worktree, "../HEAD"))
    with pytest.raises(RepoError, match="invalid worktree id"):
        Repo.open(tmp_path / "b")


# -- edit, revert, checkout ------------------------------------------------------------------------------

def test_edit_commits_and_ids_are_reproducible(make_repo):
    one, two = make_repo("one"), make_repo("two")
    made = [r.edit(A, message="A", time=100) for r in (one, two)]
    assert made[0].commit.id == made[1].commit.id  # same base, request, author and time
    assert made[0].branch == "main" and made[0].commit.message == "A"
    assert [c.id for c in one.log()] == [made[0].commit.id]
    assert top(one, "HEAD", A) == "Rome" and top(one, "HEAD", B) != "Paris"
    assert one.status().edits == 1 and not one.status().stale


def test_edit_then_revert_is_bit_identical_to_the_base(make_repo):
    repo = make_repo()
    base = state(repo, None)
    repo.edit(A, time=1)
    assert top(repo, "HEAD", A) == "Rome"
    reverted = repo.revert("HEAD", time=2)
    assert reverted.commit.kind == "revert" and reverted.commit.edit_ids == ()
    assert reverted.commit.message.startswith('Revert "Tomas Varek lives in the city of')
    assert_same_weights(state(repo, "HEAD"), base)


def test_revert_of_an_earlier_edit_equals_a_fresh_repo_with_only_the_later_one(make_repo):
    repo = make_repo()
    repo.edit(A, time=1)
    b = repo.edit(B, time=2)
    repo.revert("HEAD~1", time=3)
    b_record = repo.ledger.get_edit(b.edits[0].id)
    assert repo.ledger.edit_ids_of(repo.ledger.resolve("HEAD")) == (b_record.id,)
    # B was computed on weights holding A: after the revert it is stale, and says so.
    assert [e.id for e in repo.status().stale] == [b_record.id]
    fresh = make_repo("fresh")
    landed = fresh.apply_records([b_record], time=4)
    assert landed.edits[0].stale is True
    assert_same_weights(state(repo, "HEAD"), state(fresh, "HEAD"))
    with pytest.raises(NothingToDoError):
        repo.revert("HEAD~2")  # A is no longer at HEAD


def test_checkout_of_any_commit_is_path_independent(make_repo):
    repo = make_repo()
    ids = [repo.edit(r, time=i).commit.id for i, r in enumerate((A, B, C))]
    repo.revert(ids[1], time=9)
    commits = [c.id for c in repo.log()]
    first = {c: state(repo, c) for c in commits}
    for c in [commits[2], commits[0], commits[3], commits[1], commits[0], commits[3]]:  # hop around
        assert_same_weights(state(repo, c), first[c])
    # The model-free fingerprint of an edit set is the engine's fingerprint of the weights.
    model = repo.model("HEAD").model
    assert weights_fingerprint(model) == weights_fingerprint_of(repo.info.base_fingerprint, repo.records("HEAD"))


def test_a_fresh_checkout_gives_the_same_bits_as_a_warm_one(tmp_path, make_repo):
    """A closed repository's first checkout (base loaded, then the set applied) equals a switch in an open one."""
    repo = make_repo()
    ids = [repo.edit(r, time=i).commit.id for i, r in enumerate((A, B, C))]
    warm = {c: state(repo, c) for c in ids}
    repo.close()
    for c in ids:
        with Repo.open(tmp_path / "repo") as again:
            assert_same_weights(state(again, c), warm[c])
            assert top(again, c, A) == top(repo, c, A)  # the tokenizer is there and the model answers


def test_a_fresh_checkout_refuses_an_edit_set_that_does_not_fit_and_changes_no_weight(tmp_path, make_repo):
    from romevc.ledger import StoredDelta

    repo = make_repo()
    head = repo.edit(A, time=1).commit.id
    repo.close()
    with Repo.open(tmp_path / "repo") as again:
        stored = again.ledger.deltas_of(head)[0]
        alien = StoredDelta("f" * 64, "transformer.h.0.no_such_module", stored.layout, stored.rank,
                            stored.d_in, stored.d_out, stored.u, stored.v)
        with pytest.raises(BaseMismatchError, match="cannot apply this edit set.*no module"):
            again.workspace.checkout([alien])
        assert_same_weights(state(again, None), state(repo, None))  # every module was checked before any write
        assert_same_weights(state(again, head), state(repo, head))


def test_detached_head_refuses_to_commit_and_checkout_moves_head(make_repo):
    repo = make_repo()
    first = repo.edit(A, time=1).commit.id
    repo.edit(B, time=2)
    head = repo.checkout(first[:7])
    assert head == (None, first)
    with pytest.raises(DetachedHeadError, match="checkout -b"):
        repo.edit(C)
    assert len(repo.log("main")) == 2 and repo.ledger.head().commit == first
    assert repo.checkout("HEAD", create="side") == ("side", first)
    assert repo.edit(C, time=3).branch == "side"
    assert repo.checkout("main").branch == "main"


def test_branches_and_tags(make_repo):
    repo = make_repo()
    tip = repo.edit(A, time=1).commit.id
    repo.branch("feature")
    repo.tag("v1")
    assert [(b.name, b.current) for b in repo.branches()] == [("feature", False), ("main", True)]
    assert [(t.name, t.commit) for t in repo.tags()] == [("v1", tip)]
    assert repo.decorations()[tip] == ["HEAD -> main", "feature", "tag: v1"]
    assert repo.delete_branch("feature") == tip and repo.delete_tag("v1") == tip
    with pytest.raises(UnknownRefError):
        repo.log("feature")


def test_unknown_and_ambiguous_refs(make_repo):
    from romevc.ledger import CommitRecord

    repo = make_repo()
    with pytest.raises(UnknownRefError):
        repo.show("nope")
    seen: dict[str, CommitRecord] = {}
    for i in range(100_000):  # two root commits whose ids share 4 hex digits
        record = CommitRecord.create(parents=[], edit_ids=[], message=str(i), author=AUTHOR, time=0)
        if record.id[:4] in seen:
            repo.ledger.put_commits([seen[record.id[:4]], record])
            break
        seen[record.id[:4]] = record
    with pytest.raises(AmbiguousRefError, match="ambiguous"):
        repo.show(record.id[:4])


def test_a_changed_base_is_refused(tmp_path, make_repo):
    from safetensors.torch import load_file, save_file

    base = tmp_path / "base"
    shutil.copytree(FIXTURE, base)
    repo = make_repo("repo", base=base)
    repo.close()
    weights = load_file(base / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    with Repo.open(tmp_path / "repo") as again:
        assert again.status().edits == 0  # reading the ledger needs no model
        with pytest.raises(BaseMismatchError, match="restore the original base"):
            again.edit(A)


# -- batches and edit sets -------------------------------------------------------------------------------

def _jsonl(path: Path, rows) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_edit_batch_makes_one_commit_per_line(make_repo, tmp_path):
    repo = make_repo()
    rows = [{**A.to_dict(), "message": "first"}, B.to_dict(), {**C.to_dict(), "hparams": {"seed": 3}, "layer": 1}]
    made = repo.edit_batch(_jsonl(tmp_path / "b.jsonl", rows), time=5)
    assert [m.commit.message for m in made] == ["first", B.fact(), C.fact()]
    assert [len(m.commit.edit_ids) for m in made] == [1, 2, 3]
    assert repo.ledger.get_edit(made[2].edits[0].id).seed == 3 and not repo.status().stale
    assert [top(repo, "HEAD", r) for r in (A, B, C)] == ["Rome", "Paris", "Oslo"]


def test_a_bad_batch_line_writes_nothing(make_repo, tmp_path):
    repo = make_repo()
    repo.edit(A, time=1)
    before = repo.ledger.verify_all()
    for rows, where in (([B.to_dict(), "{not json"], ":2:"), ([B.to_dict(), {"prompt": "x {}", "subject": "y"}], ":2:"),
                        ([{**B.to_dict(), "layer": 99}], ":1:")):
        with pytest.raises(EditSetError, match=where):
            repo.edit_batch(_jsonl(tmp_path / "bad.jsonl", rows))
    after = repo.ledger.verify_all()
    assert (after.edits, after.commits) == (before.edits, before.commits) and len(repo.log()) == 1


def test_apply_a_jsonl_is_one_commit_and_a_folder_is_not_yet(make_repo, tmp_path):
    repo = make_repo()
    made = repo.apply(_jsonl(tmp_path / "set.jsonl", [A.to_dict(), B.to_dict()]), time=3)
    assert made.commit.kind == "apply" and len(made.commit.edit_ids) == 2
    assert made.commit.message == "Apply set.jsonl: 2 edit(s)"
    (tmp_path / "folder").mkdir()
    with pytest.raises(EditSetError, match="holds no romevc.json"):
        repo.apply(tmp_path / "folder")


def test_apply_an_edit_set_folder_takes_the_stored_deltas(make_repo, tmp_path):
    editset = pytest.importorskip("romevc.remotes.editset")  # the published format comes with remotes
    source = make_repo("source")
    source.edit(A, time=1)
    source.edit(B, time=2)
    folder = editset.write_editset(source, ["main"], tmp_path / "set")
    target = make_repo("target")
    target.edit(C, time=3)
    made = target.apply(folder, time=4)
    assert made.commit.message == "Apply set" and [e.subject for e in made.edits] == [A.subject, B.subject]
    assert [e.stale for e in made.edits] == [True, True]  # computed without C
    fresh = make_repo("fresh")
    fresh.apply(folder, time=5)
    assert not fresh.status().stale
    assert_same_weights(state(fresh, "HEAD"), state(source, "HEAD"))
    with pytest.raises(NothingToDoError):
        target.apply(folder)
    other = make_repo("other")
    other.edit(C, time=3)
    again = other.apply(folder, recompute=True, time=6)
    assert [e.stale for e in again.edits] == [False, False] and not other.status().stale
    assert [top(other, "HEAD", r) for r in (A, B, C)] == ["Rome", "Paris", "Oslo"]


# -- reading ---------------------------------------------------------------------------------------------

def test_show_reports_facts_norms_and_predictions(make_repo):
    repo = make_repo()
    repo.edit(A, time=1)
    report = repo.show("HEAD")
    (added,) = report.added
    assert added.fact == "Tomas Varek lives in the city of → Rome" and added.layer == 1 and added.norm > 0
    (effect,) = report.effects
    assert effect.before.token == "Vienna" and effect.after.token == "Rome"
    assert effect.after.p_target > 0.5 > effect.before.p_target
    assert repo.show("HEAD", predictions=False).effects == ()


def test_diff_lists_facts_and_probe_changes(make_repo, tmp_path):
    repo = make_repo()
    repo.edit(A, time=1)
    repo.edit(B, time=2)
    report = repo.diff("HEAD~1", "HEAD")
    assert [e.fact for e in report.added] == [B.fact()] and report.removed == ()
    assert report.to_dict()["by_layer"] == {"1": {"added": [B.fact()], "removed": []}}
    assert [e.fact for e in repo.diff("HEAD", "HEAD~1").removed] == [B.fact()]
    probes = _jsonl(tmp_path / "p.jsonl", [{"prompt": B.prompt, "subject": B.subject}, A.text, "Rosa Korik lives in the city of"])
    changed = [p.prompt for p in repo.diff("HEAD~1", "HEAD", probe=probes).probes if p.changed]
    assert changed == [B.text]


def test_blame_names_the_commits_of_a_subject_or_layer(make_repo):
    repo = make_repo()
    a = repo.edit(A, time=1).commit.id
    repo.edit(B, time=2)
    r = repo.revert(a, time=3).commit.id
    lines = repo.blame("Tomas Varek")
    assert [(x.commit.id, len(x.added), len(x.removed)) for x in lines] == [(a, 1, 0), (r, 0, 1)]
    assert len(repo.blame(layer=1)) == 3 and repo.blame(layer=3) == []


# -- verify and export -----------------------------------------------------------------------------------

def test_verify_recomputes_bit_identically_and_catches_a_flipped_byte(make_repo, tmp_path):
    repo = make_repo()
    repo.edit(A, time=1)
    edit_id = repo.edit(B, time=2).edits[0].id
    result = repo.verify(recompute=True)
    assert result.ok and [c.status for c in result.recomputed] == ["identical", "identical"]
    repo.close()
    with sqlite3.connect(tmp_path / "repo" / ".romevc" / "ledger.db") as db:
        (blob,) = db.execute("SELECT u FROM edits WHERE id = ?", (edit_id,)).fetchone()
        flipped = bytearray(blob)
        flipped[17] ^= 0x01
        db.execute("UPDATE edits SET u = ? WHERE id = ?", (bytes(flipped), edit_id))
    with Repo.open(tmp_path / "repo") as again:
        result = again.verify()
        assert not result.ok and any(edit_id in p for p in result.problems)


def test_export_loads_in_plain_transformers_with_the_same_logits(make_repo, tmp_path):
    from transformers import AutoModelForCausalLM

    repo = make_repo()
    repo.edit(A, time=1)
    out = repo.export("HEAD", tmp_path / "out")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    manifest = json.loads((out / "romevc-export.json").read_text())
    assert manifest["commit"] == repo.ledger.resolve("HEAD") and manifest["facts"] == [A.fact()]
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    loaded = repo.model("HEAD")
    ids = loaded.tokenizer(A.text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, loaded.model(ids).logits)
    with pytest.raises(Exception, match="not an empty folder"):
        repo.export("HEAD", out)


def test_generate_at_a_commit(make_repo):
    repo = make_repo()
    repo.edit(A, time=1)
    assert repo.generate("HEAD", A.text, 1).split()[0] == "Rome"
    assert repo.generate("HEAD~0", A.text, 1).startswith(" ")
