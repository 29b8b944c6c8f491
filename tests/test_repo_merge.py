"""Merging and rebasing edit sets: union, conflicts, staleness, recompute.

Fast tests use the tiny GPT-2 fixture; one test merges two branches on the SmolLM2 demo
model, as the ledger issue asks (about a minute on two CPU cores).
"""
from __future__ import annotations


import pytest

from romevc.editing.request import EditRequest
from romevc.porcelain.errors import MergeConflictError, NothingToDoError
from romevc.porcelain.merge import key_cosine, plan_merge
from romevc.repo import Repo
from tests.tiny_facts import FIXTURE, A, B, C, fact

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def repo(tmp_path, tiny):
    with Repo.init(tmp_path / "repo", str(FIXTURE), author="Ada", stats_corpus=str(FIXTURE / "corpus.txt"),
                   stats_tokens=3000, stats_root=str(tmp_path / "stats"), loaded=tiny, time=0) as r:
        yield r


def top(repo: Repo, ref: str, request: EditRequest) -> str:
    return repo.predict(ref, request.text, 1)[0].token


def diverge(repo: Repo, ours: list[EditRequest], theirs: list[EditRequest], base: list[EditRequest]) -> None:
    """main: base + ours; feature: base + theirs; HEAD on main."""
    t = 10
    for r in base:
        repo.edit(r, time=(t := t + 1))
    repo.checkout("HEAD", create="feature")
    for r in theirs:
        repo.edit(r, time=(t := t + 1))
    repo.checkout("main")
    for r in ours:
        repo.edit(r, time=(t := t + 1))


def test_merge_of_different_facts_keeps_both(repo):
    diverge(repo, ours=[B], theirs=[C], base=[A])
    result = repo.merge("feature", time=50)
    assert result.kind == "merge" and [e.fact for e in result.added] == [C.fact()]
    merge = repo.ledger.get_commit(result.commit)
    assert merge.parents == (repo.ledger.resolve("HEAD~1"), repo.ledger.resolve("feature")) and merge.kind == "merge"
    assert [top(repo, "HEAD", r) for r in (A, B, C)] == ["Rome", "Paris", "Oslo"]
    # C was computed on base + A, and now lands on base + A + B: stale, and reported.
    assert [e.fact for e in result.stale] == [C.fact()]
    assert [e.fact for e in repo.status().stale] == [C.fact()]


def test_merge_recompute_leaves_nothing_stale(repo):
    diverge(repo, ours=[B], theirs=[C], base=[A])
    result = repo.merge("feature", recompute=True, time=50)
    assert result.stale == () and len(result.recomputed) == 1
    assert not repo.status().stale and repo.verify(recompute=True).ok
    assert [top(repo, "HEAD", r) for r in (A, B, C)] == ["Rome", "Paris", "Oslo"]


def test_a_same_fact_conflict_is_refused_and_writes_nothing(repo):
    diverge(repo, ours=[fact("Ines Zatok", target="Paris")], theirs=[fact("Ines Zatok", target="Cairo")], base=[A])
    tip, count = repo.ledger.resolve("main"), repo.ledger.verify_all().commits
    with pytest.raises(MergeConflictError, match="Ines Zatok lives in the city of → Paris.*→ Cairo.*same fact") as info:
        repo.merge("feature")
    assert [c.kind for c in info.value.conflicts] == ["fact"]
    assert repo.ledger.resolve("main") == tip and repo.ledger.verify_all().commits == count
    ours = repo.merge("feature", resolve="ours", time=60)
    assert [e.target_new for e in ours.dropped] == ["Cairo"] and top(repo, "HEAD", B) == "Paris"
    repo.ledger.update_ref("refs/heads/main", tip, ours.commit)  # undo, then take theirs
    theirs = repo.merge("feature", resolve="theirs", time=61)
    assert [e.target_new for e in theirs.dropped] == ["Paris"] and top(repo, "HEAD", B) == "Cairo"


def test_parallel_keys_conflict_even_for_different_relations(repo):
    # Two relations of one subject share its last-token key: their updates fire together.
    lang = fact("Ines Zatok", "language", target="French")
    diverge(repo, ours=[B], theirs=[lang], base=[A])
    with pytest.raises(MergeConflictError, match="parallel keys in layer 1") as info:
        repo.merge("feature")
    (conflict,) = info.value.conflicts
    assert conflict.kind == "key" and conflict.cosine > 0.99
    ours, theirs = (repo.ledger.get_edit(repo.records(ref)[-1].id) for ref in ("main", "feature"))
    assert key_cosine(ours, theirs) == pytest.approx(conflict.cosine)
    assert repo.merge("feature", threshold=1.01, time=70).kind == "merge"  # a looser threshold lets it through


def test_fast_forward_up_to_date_and_duplicates(repo):
    repo.edit(A, time=1)
    repo.checkout("HEAD", create="feature")
    repo.edit(B, time=2)
    repo.checkout("main")
    result = repo.merge("feature")
    assert result.kind == "fast-forward" and [e.fact for e in result.added] == [B.fact()]
    assert repo.ledger.resolve("main") == repo.ledger.resolve("feature")
    assert repo.merge("feature").kind == "up-to-date"
    # The same fact with the same target on both sides lands once (ours).
    base = [repo.records("HEAD")[0]]
    ours = base + [repo.records("HEAD")[1]]
    twin = repo.recompute(repo.records("HEAD")[1], [])  # B computed on other weights: another edit id
    plan = plan_merge(base, ours, base + [twin])
    assert [e.id for e in plan.result] == [e.id for e in ours] and plan.dropped == (twin,)


def test_merge_follows_what_theirs_reverted(repo):
    repo.edit(A, time=1)
    repo.checkout("HEAD", create="feature")
    repo.revert("HEAD", time=2)
    repo.checkout("main")
    repo.edit(B, time=3)
    result = repo.merge("feature", time=4)
    assert [e.fact for e in repo.show(result.commit, predictions=False).removed] == [A.fact()]
    assert [e.subject for e in repo.records("HEAD")] == ["Ines Zatok"]


def test_rebase_recomputes_stale_edits_and_replays_onto_a_branch(repo):
    diverge(repo, ours=[B], theirs=[C], base=[A])
    repo.merge("feature", time=50)
    assert repo.status().stale
    result = repo.rebase(time=51)
    assert result.kind == "rebase" and len(result.recomputed) == 1 and not repo.status().stale
    with pytest.raises(NothingToDoError):
        repo.rebase()
    # feature (A, C) replayed onto main: linear history, its own edit recomputed on top.
    repo.checkout("feature")
    replayed = repo.rebase("main~2")  # main~2 = A then B, without the merge and recompute commits
    assert replayed.kind == "rebase" and len(replayed.recomputed) == 1
    assert repo.ledger.resolve("feature~1") == repo.ledger.resolve("main~2")
    assert [e.subject for e in repo.records("feature")] == ["Tomas Varek", "Ines Zatok", "Pavel Tupok"]
    assert not repo.status().stale and top(repo, "feature", C) == "Oslo"


def test_merge_of_unrelated_histories_is_the_union(repo):
    repo.edit(A, time=1)
    assert repo.checkout(None, orphan="other") == ("other", None)
    repo.edit(B, time=2)
    repo.checkout("main")
    result = repo.merge("other", time=3)
    assert result.kind == "merge" and [e.subject for e in repo.records("HEAD")] == ["Tomas Varek", "Ines Zatok"]
    assert [top(repo, "HEAD", r) for r in (A, B)] == ["Rome", "Paris"]


@pytest.mark.demo
def test_merge_on_the_demo_model_keeps_both_facts(tmp_path, demo_loaded, demo_editor):
    """Two branches edit different facts of SmolLM2 (r-rome, layer 4); their merge holds both.

    The branches are unrelated histories (an orphan branch), so the test pays for two
    edits only. The merged-in edit lands stale (computed without the other) and still works.
    The model and 20,000-token statistics are the session's (tests/conftest.py).
    """
    tower = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome")
    louvre = EditRequest("{} is located in the city of", "The Louvre", "London")
    with Repo.init(tmp_path / "repo", None, loaded=demo_loaded, stats=demo_editor.stats, author="demo",
                   time=0) as repo:
        try:
            before = [repo.predict(None, r.text, 1)[0].token.strip() for r in (tower, louvre)]
            assert before == ["Paris", "Paris"]
            repo.edit(tower, time=1)
            repo.checkout(None, orphan="louvre")
            repo.edit(louvre, time=2)
            repo.checkout("main")
            result = repo.merge("louvre", time=3)
            assert result.kind == "merge" and [e.fact for e in result.stale] == [louvre.fact()]
            after = [repo.predict("HEAD", r.text, 1)[0].token.strip() for r in (tower, louvre)]
            assert after == ["Rome", "London"]
        finally:
            repo.model(None)  # the session's model goes back to the base weights, exactly
