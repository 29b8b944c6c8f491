"""AlphaEdit batches in the ledger: the keys of the edits HEAD carries are protected, the
batch recomputes exactly from the ledger alone, and ``edit --method alphaedit``."""
from __future__ import annotations

import pytest

from romevc.editing.alphaedit import compute_alphaedit
from romevc.editor import Editor
from romevc.repo import Repo, preserved_requests
from tests.test_memit import BATCH, TEMPLATES_SHORT
from tests.test_memit_ledger import cli_repo, counts, make_repo, one_error_line, write_requests  # noqa: F401
from tests.test_repo import assert_same_weights, state, top
from tests.tiny_facts import A, AUTHOR

pytestmark = pytest.mark.usefixtures("one_thread")

FACTS = BATCH[:3]
HP = dict(layers=(0, 1), v_steps=15, null_space_energy=0.3, l2=1.0)


@pytest.fixture()
def alpha_repo(make_repo):  # noqa: F811
    """A ROME edit of A, then an AlphaEdit batch of three facts on top of it."""
    repo = make_repo()
    repo.edit(A, author=AUTHOR, time=1)
    made = repo.edit_memit(FACTS, HP, author=AUTHOR, time=2, method="alphaedit")
    return repo, made


def test_a_batch_commits_once_protects_the_earlier_edit_and_flips_its_facts(alpha_repo):
    repo, made = alpha_repo
    assert made.commit.message.startswith("Edit 3 facts with AlphaEdit (layers 0-1)")
    pieces = repo.records("HEAD")[1:]
    assert len(pieces) == 6 and all(r.method == "alphaedit" and r.hparams["null_space_energy"] == 0.3 for r in pieces)
    assert repo.stale(repo.records("HEAD")) == [False] * 7
    assert [top(repo, "HEAD", r).strip() for r in FACTS] == [r.target_new for r in FACTS]


def test_checkout_equals_the_engine_with_the_earlier_request_preserved(alpha_repo, tiny):
    """The ledger's batch is exactly compute_alphaedit on A's weights protecting A's keys, and
    keeps A's edit likelier than the same batch without that protection (the tiny model's
    few dimensions cannot keep it whole: p 0.02 against 0.002)."""
    repo, _ = alpha_repo
    at_head = state(repo, "HEAD")
    first = repo.records("HEAD~1")
    editor = Editor(tiny, stats=repo.workspace.editor.stats)
    before = [repo.workspace.delta(r) for r in first]
    editor.apply(before)
    pieces = repo.records("HEAD")[1:]
    templates = pieces[0].templates
    hp = editor.alphaedit_hparams(**HP)
    kept, _ = compute_alphaedit(tiny.model, tiny.tokenizer, FACTS, hp, stats=editor.stats, preserve=[A],
                                templates=templates, progress=False)
    free, _ = compute_alphaedit(tiny.model, tiny.tokenizer, FACTS, hp, stats=editor.stats,
                                templates=templates, progress=False)
    editor.apply(before + [kept])
    assert_same_weights(at_head, {k: v.clone() for k, v in tiny.model.state_dict().items()})
    protected = editor.probability(A.text, A.target_new)
    editor.apply(before + [free])
    assert protected > 3 * editor.probability(A.text, A.target_new)
    editor.restore()


def test_verify_recomputes_the_batch_identically(alpha_repo):
    repo, _ = alpha_repo
    result = repo.verify(recompute=True)
    assert result.ok, result.problems
    assert [c.status for c in result.recomputed] == ["identical"] * 7


def test_preserved_requests_are_each_fact_once_in_order(alpha_repo):
    repo, _ = alpha_repo
    assert preserved_requests(repo.records("HEAD")) == [A, *FACTS]  # six pieces, three requests


def test_revert_of_the_earlier_edit_makes_the_batch_stale_and_rebase_recomputes_it(alpha_repo):
    repo, _ = alpha_repo
    repo.revert("HEAD~1", author=AUTHOR, time=3)
    assert len(repo.status().stale) == 3  # one per fact: computed on A's weights, protecting A's keys
    rebased = repo.rebase(author=AUTHOR, time=4)
    assert len(rebased.recomputed) == 6 and repo.status().stale == ()
    assert all(r.method == "alphaedit" for r in repo.records("HEAD"))
    assert repo.verify(recompute=True).ok


def test_cli_edit_alphaedit_and_its_settings(invoke_cli, cli_repo, tmp_path):  # noqa: F811
    path = write_requests(tmp_path / "facts.jsonl", FACTS)
    args = ["--method", "alphaedit", "--layers", "0-1", "--null-space-energy", "0.3"]
    out = invoke_cli("edit", *args, "--batch", path, "-m", "Move three people").stdout
    assert out.splitlines()[0].endswith("Move three people")
    with Repo.open(cli_repo) as repo:
        records = repo.records("HEAD")
        assert len(records) == 6 and records[0].method == "alphaedit"
        assert records[0].hparams["null_space_energy"] == 0.3
    assert invoke_cli("verify", "--recompute").stdout.splitlines()[-1] == "ok"
    before = counts(cli_repo)
    usage = invoke_cli("edit", "--method", "memit", "--null-space-energy", "0.3", "--batch", path, code=2)
    assert "--null-space-energy is an alphaedit setting" in usage.stderr
    usage = invoke_cli("edit", *args, "--mom2-update-weight", "10", "--batch", path, code=2)
    assert "--mom2-update-weight is a memit setting" in usage.stderr
    bad = one_error_line(invoke_cli("edit", "--method", "alphaedit", "--null-space-energy", "1.5", "--batch", path,
                                    code=1))
    assert "null_space_energy" in bad
    assert counts(cli_repo) == before
