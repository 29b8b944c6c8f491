"""MEMIT batches in the ledger: one commit of rank-one pieces, exact checkout and revert,
no false staleness, recompute as a unit, and the CLI's ``edit --method memit``."""
from __future__ import annotations

import json
import sqlite3

import pytest

from romevc.editor import Editor
from romevc.errors import RomevcError
from romevc.porcelain.errors import EditSetError, RecomputeError
from romevc.porcelain.materialize import batch_id, stale_flags
from romevc.repo import Repo
from tests.test_concurrency import someone_commits_during_first
from tests.test_memit import BATCH, TINY_HP
from tests.test_repo import assert_same_weights, state, top
from tests.tiny_facts import A, AUTHOR, FIXTURE

pytestmark = pytest.mark.usefixtures("one_thread")

FACTS = BATCH[:3]
HP = dict(TINY_HP, v_steps=8, templates=[[5, 10], [10, 10]])  # layers (0, 1), λ 10, ROME's 21 templates: eight steps flip these three facts


@pytest.fixture()
def make_repo(tmp_path, tiny):
    """Fresh repositories on the tiny model sharing one loaded base and statistics (as in test_repo)."""
    opened = []

    def make(name: str = "repo") -> Repo:
        repo = Repo.init(tmp_path / name, str(FIXTURE), author=AUTHOR, stats_corpus=str(FIXTURE / "corpus.txt"),
                         stats_tokens=3000, stats_root=str(tmp_path / "stats"), loaded=tiny, time=0)
        opened.append(repo)
        return repo

    yield make
    for repo in opened:
        repo.close()


def write_requests(path, requests, **extra) -> str:
    path.write_text("".join(json.dumps({"prompt": r.prompt, "subject": r.subject, "target_new": r.target_new,
                                        **extra}) + "\n" for r in requests))
    return str(path)


def counts(root) -> tuple[int, int]:
    with sqlite3.connect(root / ".romevc" / "ledger.db") as db:
        return tuple(db.execute(f"select count(*) from {t}").fetchone()[0] for t in ("edits", "commits"))


@pytest.fixture()
def memit_repo(make_repo):
    """A repository whose first commit is a ROME edit of A and whose HEAD adds a MEMIT batch of three facts."""
    repo = make_repo()
    repo.edit(A, author=AUTHOR, time=1)
    made = repo.edit_memit(FACTS, HP, author=AUTHOR, time=2)
    return repo, made


def test_a_batch_is_one_commit_of_request_major_pieces_that_all_flip(memit_repo):
    repo, made = memit_repo
    assert len(repo.log()) == 2 and made.commit.kind == "edit"
    assert made.commit.message.startswith("Edit 3 facts with MEMIT (layers 0-1)")
    records = repo.records("HEAD")[1:]
    assert [(r.hparams["batch"]["index"], r.layer) for r in records] == [(i, l) for i in range(3) for l in (0, 1)]
    assert {batch_id(r) for r in records} == {made.edits[0].batch["id"]} and all(r.rank == 1 for r in records)
    assert all(r.method == "memit" and r.hparams["batch"]["size"] == 3 for r in records)
    assert all(r.weights_fingerprint == records[0].weights_fingerprint for r in records)
    assert [e.fact for e in made.edits] == [r.fact() for r in FACTS] and made.edits[0].layers == (0, 1)
    assert [top(repo, "HEAD", r).strip() for r in FACTS] == [r.target_new for r in FACTS]


def test_checkout_is_bit_identical_to_applying_the_result_and_revert_to_the_weights_before(memit_repo, tiny):
    repo, made = memit_repo
    at_head, before = state(repo, "HEAD"), state(repo, "HEAD~1")
    editor = Editor(tiny, stats=repo.workspace.editor.stats)
    first = repo.records("HEAD~1")
    editor.apply([repo.workspace.delta(r) for r in first])  # the weights the batch was computed on
    result = editor.compute_memit(FACTS, editor.memit_hparams(**HP))
    editor.apply([repo.workspace.delta(r) for r in first] + [result])
    assert_same_weights(at_head, {k: v.clone() for k, v in tiny.model.state_dict().items()})

    reverted = repo.revert("HEAD", author=AUTHOR, time=3)
    assert len(reverted.commit.edit_ids) == 1  # every piece of the batch is gone, A stays
    assert_same_weights(state(repo, "HEAD"), before)
    repo.revert("HEAD~2", author=AUTHOR, time=4)  # and without A too: the pristine base
    assert_same_weights(state(repo, "HEAD"), state(repo, None))


def test_a_fresh_batch_is_not_stale_and_a_batch_on_other_weights_is(memit_repo):
    repo, made = memit_repo
    records = repo.records("HEAD")
    assert repo.stale(records) == [False] * 7 and repo.status().stale == ()
    assert all(e.stale is False for e in repo.show("HEAD", predictions=False).added)
    # The same pieces without the edit of A before them were computed on other weights: all stale.
    assert stale_flags(repo.info.base_fingerprint, records[1:]) == [True] * 6


def test_show_lists_each_fact_once_with_its_layers(memit_repo):
    repo, made = memit_repo
    report = repo.show("HEAD")
    assert [e.fact for e in report.added] == [r.fact() for r in FACTS]
    assert [e.layer_text for e in report.added] == ["0-1"] * 3
    assert [x.after.token.strip() for x in report.effects] == [r.target_new for r in FACTS]
    data = report.to_dict()["added"][1]
    assert data["batch"] == {"id": batch_id(repo.records("HEAD")[1]), "index": 1, "size": 3}
    assert data["layers"] == "0-1" and len(data["pieces"]) == 2


def test_diff_and_blame_list_each_fact_once_with_its_layers(memit_repo):
    repo, made = memit_repo
    report = repo.diff("HEAD~1", "HEAD")
    assert [(e.fact, e.layers) for e in report.added] == [(r.fact(), (0, 1)) for r in FACTS]
    assert report.to_dict()["by_layer"] == {"0-1": {"added": [r.fact() for r in FACTS], "removed": []}}
    assert [len(e.pieces) for e in report.added] == [2, 2, 2]
    back = repo.diff("HEAD", "HEAD~1")
    assert [e.fact for e in back.removed] == [r.fact() for r in FACTS]
    lines = repo.blame(FACTS[0].subject)  # the ROME edit of the same subject, then the batch's fact
    assert [[(e.fact, e.layer_text) for e in line.added] for line in lines] == [[(A.fact(), "1")],
                                                                                [(FACTS[0].fact(), "0-1")]]
    piece_line = repo.blame(layer=1)[-1]  # the layer-1 pieces only: each fact once, at that layer
    assert [e.layer_text for e in piece_line.added] == ["1", "1", "1"]


def test_verify_recomputes_the_batch_as_a_unit(memit_repo):
    repo, _ = memit_repo
    result = repo.verify(recompute=True)
    assert result.ok, result.problems
    assert [c.status for c in result.recomputed] == ["identical"] * 7
    pieces = repo.records("HEAD")[1:]
    with pytest.raises(RecomputeError, match="whole batch"):
        repo.recompute(pieces[0], repo.records("HEAD")[:1])
    with pytest.raises(RecomputeError, match="incomplete"):
        repo.recompute_batch(pieces[:-1], repo.records("HEAD")[:1])


def test_a_batch_landing_on_other_weights_is_recomputed_whole_by_rebase(make_repo):
    repo = make_repo()
    repo.edit(A, author=AUTHOR, time=1)
    repo.checkout("HEAD", create="side")
    repo.edit_memit(FACTS, HP, author=AUTHOR, time=2)
    repo.checkout("main")
    repo.edit(BATCH[4], author=AUTHOR, time=3)
    repo.checkout("side")
    rebased = repo.rebase("main", author=AUTHOR, time=4)
    records = repo.records("HEAD")
    assert len(rebased.recomputed) == 6 and repo.stale(records) == [False] * 8
    assert len({batch_id(r) for r in records[2:]}) == 1
    assert [top(repo, "HEAD", r).strip() for r in FACTS] == [r.target_new for r in FACTS]


def test_bad_batches_are_refused_and_write_nothing(make_repo, tmp_path):
    repo = make_repo()
    repo.edit(A, author=AUTHOR, time=1)
    before = counts(repo.root)
    with pytest.raises(EditSetError, match=r":1: a MEMIT batch takes its hyperparameters for the whole batch"):
        repo.edit_memit(write_requests(tmp_path / "a.jsonl", FACTS, layer=1), HP)
    with pytest.raises(RomevcError, match="out of range"):
        repo.edit_memit(FACTS, dict(HP, layers=(0, 9)))
    assert counts(repo.root) == before


# -- the CLI ---------------------------------------------------------------------------------------

@pytest.fixture()
def cli_repo(invoke_cli, monkeypatch, tmp_path):
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    invoke_cli("init", "--base", str(FIXTURE), "--stats-corpus", str(FIXTURE / "corpus.txt"), "--stats-tokens",
               "3000", "--author", "Ada")
    return tmp_path / "repo"


MEMIT_ARGS = ["--method", "memit", "--layers", "0-1", "--mom2-update-weight", "10"]


def test_cli_edit_memit_commits_once_and_show_lists_facts_once(invoke_cli, cli_repo, tmp_path):
    path = write_requests(tmp_path / "facts.jsonl", FACTS)
    out = invoke_cli("edit", *MEMIT_ARGS, "--batch", path, "-m", "Move three people").stdout
    with Repo.open(cli_repo) as repo:
        head = repo.ledger.resolve("HEAD")
        assert len(repo.log()) == 1 and len(repo.records("HEAD")) == 6
        assert repo.records("HEAD")[0].hparams["mom2_update_weight"] == 10.0
    lines = out.splitlines()
    assert lines[0] == f"[main {head[:7]}] Move three people" and len(lines) == 4
    assert all("layers 0-1" in line for line in lines[1:])
    shown = invoke_cli("show", "--no-predict").stdout
    assert sum("layers 0-1" in line for line in shown.splitlines()) == 3
    data = json.loads(invoke_cli("show", "--no-predict", "--json").stdout)
    assert [e["batch"]["index"] for e in data["added"]] == [0, 1, 2]
    assert "0 stale" in invoke_cli("status").stdout
    assert invoke_cli("verify", "--recompute").stdout.splitlines()[-2:] == ["recomputed: 6 identical, 0 differs, "
                                                                            "0 skipped", "ok"]


def one_error_line(result) -> str:
    """The refusal's message: nothing on stdout, one ``error:`` line ending stderr (after any load progress)."""
    lines = result.stderr.splitlines()
    assert result.stdout == "" and lines[-1].startswith("error: ")
    assert sum("error" in line for line in lines) == 1, result.stderr
    return lines[-1]


def test_cli_bad_memit_input_is_one_line_and_writes_nothing(invoke_cli, cli_repo, tmp_path):
    before = counts(cli_repo)
    bad_line = write_requests(tmp_path / "bad.jsonl", FACTS, seed=3)
    assert "sets seed" in one_error_line(invoke_cli("edit", *MEMIT_ARGS, "--batch", bad_line, code=1))
    good = write_requests(tmp_path / "good.jsonl", FACTS)
    out = one_error_line(invoke_cli("edit", "--method", "memit", "--layers", "0-9", "--batch", good, code=1))
    assert "out of range" in out
    out = one_error_line(invoke_cli("edit", "--method", "memit", "--layers", "5-3", "--batch", good, code=1))
    assert "--layers must be" in out
    assert counts(cli_repo) == before


def test_a_batch_whose_branch_moved_is_recomputed_on_the_new_tip(make_repo):
    ours = make_repo()
    with Repo.open(ours.root, loaded=ours.workspace.loaded) as theirs:
        moved = someone_commits_during_first(ours, theirs, "compute_memit")
        made = ours.edit_memit(FACTS, HP, time=2)
    records = ours.records("main")
    assert tuple(made.commit.parents) == (moved[0],) and len(ours.log()) == 2
    assert [r.request["subject"] for r in records] == [A.subject] + [r.subject for r in FACTS for _ in (0, 1)]
    assert not any(ours.stale(records)) and ours.verify(recompute=True).ok
