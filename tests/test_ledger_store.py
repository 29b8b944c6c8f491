"""The ledger's storage contract, written once and run on every backend of ``tests/ledger_backends.py``:
a SQLite file, in-memory SQLite, and PostgreSQL when ROMEVC_TEST_POSTGRES_URL is set (a fresh
database per test). Tests that need several connections at once run on the shared backends.

Synthetic edits only (seeded random float32 factors of GPT-sized shapes): no model, no
torch. Tests fix author and time, so every id is reproducible.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import text, update

from romevc.errors import RomevcError
from romevc.ledger import (
    ANY, LAYOUT_CONV1D, LAYOUT_LINEAR, AmbiguousRefError, CommitRecord, CorruptObjectError, EditRecord, Head,
    Ledger, LedgerError, LedgerExistsError, NotARepositoryError, RefConflictError, RefFormatError, RemoteExistsError, RepoInfo,
    StatsMeta, UnknownObjectError, UnknownRefError, UnknownRemoteError, check_ref_name, default_url,
)
from romevc.ledger.engine import is_locked_error, normalise_url
from romevc.ledger.errors import LedgerUnavailableError, UnstorableValueError
from romevc.ledger.models import SqlEdit, SqlRef
from romevc.ledger.refs import worktree_head
from tests import ledger_backends as backends

INFO = RepoInfo(
    base_id="HuggingFaceTB/SmolLM2-135M", architecture="llama", dtype="float32", base_fingerprint="ab" * 32,
    module_template="model.layers.{}.mlp.down_proj", layout=LAYOUT_LINEAR, revision="main@1234", created=1_700_000_000,
)
D_IN, D_OUT = 1536, 576  # SmolLM2-135M's down_proj: d_ff → d_model
T0 = 1_700_000_000


@pytest.fixture(params=backends.backend_params(backends.BACKENDS))
def ledger_url(request, tmp_path):
    with backends.ledger_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture(params=backends.backend_params(backends.SHARED_BACKENDS))
def shared_url(request, tmp_path):
    """A URL that several connections (threads, processes) can open at once."""
    with backends.ledger_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def ledger(ledger_url):
    with Ledger.create(ledger_url, INFO) as lg:
        yield lg


def make_edit(seed: int = 0, *, subject: str = "The Eiffel Tower", layer: int = 4, rank: int = 1,
              d_in: int = D_IN, d_out: int = D_OUT, target: str = "Rome") -> EditRecord:
    rng = np.random.default_rng(seed)
    return EditRecord.create(
        request={"prompt": "{} is located in the city of", "subject": subject, "target_new": target,
                 "target_true": None},
        method="r-rome", hparams={"v_lr": 0.5, "v_num_grad_steps": 20, "kl_factor": 0.0625, "clamp_norm_factor": 4},
        seed=seed, templates=("{}", "The weather today. {}"), layer=layer,
        module=INFO.module_template.format(layer), layout=LAYOUT_LINEAR,
        u=rng.standard_normal(rank * d_in).astype("<f4").tobytes(),
        v=rng.standard_normal(rank * d_out).astype("<f4").tobytes(), rank=rank,
        stats_id="stats-" + "0" * 8, weights_fingerprint="cd" * 32, author="Ada <ada@example.org>", time=T0 + seed,
    )


def make_commit(parents=(), edit_ids=(), message="edit", t=0, kind="edit") -> CommitRecord:
    return CommitRecord.create(parents=parents, edit_ids=edit_ids, message=message, author="Ada <ada@example.org>",
                               time=T0 + t, tz=3600, kind=kind)


def chain(ledger: Ledger, n: int, branch: str = "main", start: str | None = None) -> list[CommitRecord]:
    """n commits on ``branch`` (from ``start``), each adding one fresh edit to its parent's set."""
    out: list[CommitRecord] = []
    parent = ledger.get_commit(start) if start else None
    for i in range(n):
        edit = make_edit(zlib.crc32(f"{branch} {i} {parent.id if parent else ''}".encode()))
        ledger.put_edit(edit)
        parent = ledger.commit_on_branch(branch, make_commit(
            (parent.id,) if parent else (), (parent.edit_ids if parent else ()) + (edit.id,), f"{branch} {i}",
            t=parent.time - T0 + 1 if parent else 0,
        ))
        out.append(parent)
    return out


# -- content addressing -----------------------------------------------------------------

def test_edit_id_is_stable_and_canonical():
    edit = make_edit(7)
    # Pinned: a change of the canonical serialization must be a deliberate FORMAT_VERSION bump.
    assert edit.id == make_edit(7).id
    assert len(edit.id) == 64
    shuffled = EditRecord.create(**{**_create_kwargs(edit), "hparams": dict(reversed(list(edit.hparams.items())))})
    assert shuffled.id == edit.id
    assert make_edit(7, target="Paris").id != edit.id
    assert abs(edit.norm - float(np.linalg.norm(np.frombuffer(edit.u, "<f4")) * np.linalg.norm(np.frombuffer(edit.v, "<f4")))) < 1e-3
    edit.verify()
    with pytest.raises(CorruptObjectError, match=edit.id):
        dataclasses.replace(edit, seed=8).verify()


def _create_kwargs(e: EditRecord) -> dict:
    return dict(request=e.request, method=e.method, hparams=e.hparams, seed=e.seed, templates=e.templates,
                layer=e.layer, module=e.module, layout=e.layout, u=e.u, v=e.v, rank=e.rank, stats_id=e.stats_id,
                weights_fingerprint=e.weights_fingerprint, author=e.author, time=e.time)


def test_golden_ids():
    """Ids are part of the on-disk and on-remote format: they must never drift silently."""
    edit = EditRecord.create(
        request={"prompt": "{} plays", "subject": "Messi", "target_new": "golf"}, method="rome",
        hparams={"lr": 0.5}, seed=0, templates=("{}",), layer=1, module="transformer.h.1.mlp.c_proj",
        layout=LAYOUT_CONV1D, u=np.arange(4, dtype="<f4").tobytes(), v=np.ones(2, dtype="<f4").tobytes(),
        stats_id=None, weights_fingerprint=None, author="a", time=0,
    )
    commit = CommitRecord.create(parents=(), edit_ids=(edit.id,), message="m", author="a", time=0, tz=0)
    assert (edit.d_in, edit.d_out, edit.rank) == (4, 2, 1)
    assert edit.id == GOLDEN_EDIT_ID
    assert commit.id == GOLDEN_COMMIT_ID


GOLDEN_EDIT_ID = "4c9e3122976131e3add12db99a7cd6206ffeaafb0390816c00d5feae5b044184"
GOLDEN_COMMIT_ID = "a0013836fd374c38db37d7fe439c2654a1d86e705d3e76f2034d40e61265aa3f"


def test_commit_id_covers_every_field():
    base = make_commit(("a" * 64,), ("b" * 64,), "msg", t=1)
    variants = [make_commit(("c" * 64,), ("b" * 64,), "msg", t=1), make_commit(("a" * 64,), (), "msg", t=1),
                make_commit(("a" * 64,), ("b" * 64,), "msg2", t=1), make_commit(("a" * 64,), ("b" * 64,), "msg", t=2),
                make_commit(("a" * 64,), ("b" * 64,), "msg", t=1, kind="revert"),
                dataclasses.replace(base, tz=0, id=""), dataclasses.replace(base, author="Bob", id="")]
    ids = {base.id} | {v.compute_id() for v in variants}
    assert len(ids) == len(variants) + 1
    with pytest.raises(CorruptObjectError, match=base.id):
        dataclasses.replace(base, message="forged").verify()


@pytest.mark.parametrize("bad", [
    dict(u=b"\x00" * 6),  # not whole float32 values
    dict(u=np.array([np.nan] * 4, "<f4").tobytes()),
    dict(layout="rows"),
    dict(hparams={"x": float("inf")}),
    dict(rank=3),
])
def test_edit_record_validates(bad):
    good = _create_kwargs(make_edit(1, d_in=4, d_out=2))
    with pytest.raises(ValueError):
        EditRecord.create(**{**good, **bad})


# -- edits and commits ------------------------------------------------------------------

def test_create_gives_unborn_main(ledger):
    assert ledger.head() == Head("main", None)
    assert ledger.repo_info() == INFO
    assert ledger.list_refs() == []
    assert ledger.log() == []
    with pytest.raises(UnknownRefError, match="no commits yet"):
        ledger.resolve("HEAD")


def test_edit_round_trip_is_exact_and_idempotent(ledger):
    edit = make_edit(3, rank=2)
    assert ledger.put_edit(edit) == edit.id
    assert ledger.put_edit(edit) == edit.id
    stored = ledger.get_edit(edit.id)
    assert dataclasses.asdict(stored) == dataclasses.asdict(edit)
    assert stored.u_shape == (2, D_IN) and stored.v_shape == (2, D_OUT)
    assert ledger.resolve_edit(edit.id[:6].upper()) == edit.id
    assert ledger.set_edit_notes(edit.id, {"stale": True}).notes == {"stale": True}
    assert ledger.get_edit(edit.id).id == edit.id  # notes are outside the id
    with pytest.raises(UnknownObjectError):
        ledger.get_edit("0" * 64)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hparams=st.dictionaries(st.text(max_size=8), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8,
), max_size=5), subject=st.text(min_size=1, max_size=20))
def test_any_json_metadata_round_trips_to_the_same_id(ledger, hparams, subject):
    try:
        edit = EditRecord.create(**{**_create_kwargs(make_edit(5, d_in=8, d_out=4)), "hparams": hparams,
                                    "request": {"subject": subject, "prompt": "{}", "target_new": "x"}})
    except ValueError:
        return  # lone surrogates: not storable, and refused up front
    if "\x00" in subject:  # fine inside JSON (escaped), but PostgreSQL cannot store it in the subject column
        with pytest.raises(UnstorableValueError, match="NUL"):
            ledger.put_edit(edit)
        return
    ledger.put_edit(edit)
    stored = ledger.get_edit(edit.id)
    stored.verify()
    assert stored.hparams == edit.hparams and stored.subject == subject


def test_commits_edits_and_snapshots(ledger):
    e1, e2 = make_edit(1), make_edit(2, layer=6)
    ledger.put_edits([e1, e2])
    c1 = ledger.commit_on_branch("main", make_commit((), (e1.id,), "first"))
    c2 = ledger.commit_on_branch("main", make_commit((c1.id,), (e2.id, e1.id), "second", t=1))
    assert ledger.put_commit(c2) == c2.id  # idempotent
    assert ledger.get_commit(c2.id) == c2 and ledger.get_commit(c2.id).edit_ids == (e2.id, e1.id)
    assert ledger.edit_ids_of(c2.id) == (e2.id, e1.id)
    assert [e.id for e in ledger.edits_of(c2.id)] == [e2.id, e1.id]
    assert ledger.head() == Head("main", c2.id)
    with pytest.raises(UnknownObjectError, match="edit"):
        ledger.put_commit(make_commit((c2.id,), ("f" * 64,), t=2))
    with pytest.raises(UnknownObjectError, match="parent"):
        ledger.put_commit(make_commit(("e" * 64,), (), t=2))
    with pytest.raises(UnknownObjectError):
        ledger.get_commit(c2.id[:10])


def test_flipped_byte_in_a_blob_is_caught(ledger):
    good, bad = make_edit(1), make_edit(2)
    ledger.put_edits([good, bad])
    c = ledger.commit_on_branch("main", make_commit((), (good.id, bad.id)))
    assert ledger.verify_all().ok
    flipped = bytearray(bad.u)
    flipped[100] ^= 0x01
    with ledger.transaction() as s:
        s.execute(update(SqlEdit).where(SqlEdit.id == bad.id).values(u=bytes(flipped)))
    report = ledger.verify_all()
    assert (report.edits, report.commits, report.refs) == (2, 1, 2)
    assert len(report.problems) == 1 and bad.id in report.problems[0]
    with pytest.raises(CorruptObjectError, match=bad.id):
        ledger.get_edit(bad.id)
    with pytest.raises(CorruptObjectError, match=bad.id):
        ledger.edits_of(c.id)


def test_verify_all_catches_forged_commits_and_dangling_refs(ledger):
    c = chain(ledger, 2)
    with ledger.transaction() as s:
        s.execute(text("UPDATE commits SET message = 'forged' WHERE id = :id"), {"id": c[0].id})
    problems = ledger.verify_all().problems
    assert len(problems) == 1 and c[0].id in problems[0]


# -- refs -------------------------------------------------------------------------------

def test_compare_and_swap_detects_a_moved_branch(ledger):
    c = chain(ledger, 3)
    ledger.update_ref("refs/heads/feature", c[0].id, None)
    with pytest.raises(RefConflictError, match="did not exist|was at"):
        ledger.update_ref("refs/heads/feature", c[1].id, None)  # someone created it first
    ledger.update_ref("refs/heads/feature", c[1].id, c[0].id)
    with pytest.raises(RefConflictError, match=c[1].id[:12]):
        ledger.update_ref("refs/heads/feature", c[2].id, c[0].id)  # stale expectation
    assert ledger.get_ref("refs/heads/feature").target == c[1].id
    ledger.update_ref("refs/tags/v1", c[2].id, ANY)
    assert [r.short_name for r in ledger.list_refs()] == ["feature", "main", "v1"]
    assert [r.name for r in ledger.list_refs("refs/tags/")] == ["refs/tags/v1"]


def test_commit_on_a_moved_branch_stores_nothing(ledger):
    c = chain(ledger, 2)
    stale = make_commit((c[0].id,), c[0].edit_ids, "based on an old tip", t=50)
    with pytest.raises(RefConflictError):
        ledger.commit_on_branch("main", stale)
    with pytest.raises(UnknownObjectError):
        ledger.get_commit(stale.id)
    assert ledger.head() == Head("main", c[1].id)


def test_head_symbolic_and_detached(ledger):
    c = chain(ledger, 2)
    ledger.set_head_detached(c[0].id)
    assert ledger.head() == Head(None, c[0].id)
    d = ledger.commit_on_head(make_commit((c[0].id,), c[0].edit_ids, "detached work", t=10))
    assert ledger.head() == Head(None, d.id)
    assert ledger.get_ref("refs/heads/main").target == c[1].id
    with pytest.raises(RefConflictError):
        ledger.commit_on_head(make_commit((c[0].id,), (), "stale", t=11))
    ledger.set_head_symbolic("topic")  # unborn, like git checkout --orphan
    assert ledger.head() == Head("topic", None)
    ledger.set_head_symbolic("refs/heads/main")
    assert ledger.head() == Head("main", c[1].id)
    e = ledger.commit_on_head(make_commit((c[1].id,), (), "on main", t=12))
    assert ledger.head() == Head("main", e.id)
    with pytest.raises(UnknownObjectError):
        ledger.set_head_detached("1" * 64)


def test_delete_ref(ledger):
    c = chain(ledger, 2)
    ledger.update_ref("refs/heads/old", c[0].id, None)
    with pytest.raises(RefConflictError, match="HEAD"):
        ledger.delete_ref("refs/heads/main")
    with pytest.raises(RefConflictError):
        ledger.delete_ref("refs/heads/old", c[1].id)
    ledger.delete_ref("refs/heads/old", c[0].id)
    assert ledger.get_ref("refs/heads/old") is None
    with pytest.raises(UnknownRefError):
        ledger.delete_ref("refs/heads/old")


def test_each_folder_has_its_own_head(shared_url):
    """A folder joining a shared ledger reads and moves its own HEAD row, never the main one;
    no one deletes a branch some folder has checked out; listings hide the worktree rows."""
    main = Ledger.create(shared_url, INFO)
    bob = Ledger(shared_url, head_name=worktree_head("b0b"))
    with main, bob:
        c = chain(main, 2)
        assert bob.add_head() == Head("main", c[1].id)  # starts where the main HEAD is
        with pytest.raises(RefConflictError, match="already exists"):
            bob.add_head()
        bob.update_ref("refs/heads/feature", c[0].id, None)
        bob.set_head_symbolic("feature")
        assert (main.head(), bob.head()) == (Head("main", c[1].id), Head("feature", c[0].id))
        assert (main.resolve("HEAD"), bob.resolve("HEAD"), bob.resolve("@"), bob.resolve("HEAD^0")) == \
            (c[1].id, c[0].id, c[0].id, c[0].id)
        d = bob.commit_on_head(make_commit((c[0].id,), (), "on feature", t=10))
        assert main.head() == Head("main", c[1].id) and bob.get_ref("refs/heads/feature").target == d.id
        assert [x.id for x in bob.log()] == [d.id, c[0].id] and [x.id for x in main.log()] == [c[1].id, c[0].id]
        assert bob.resolve("HEAD~1") == c[0].id and main.resolve("HEAD~1") == c[0].id
        with pytest.raises(RefConflictError, match="checked out in another folder.*worktree b0b"):
            main.delete_ref("refs/heads/feature")
        with pytest.raises(RefConflictError, match="checked out in another folder.*created the ledger"):
            bob.delete_ref("refs/heads/main")
        with pytest.raises(RefConflictError, match="HEAD points at it"):
            bob.delete_ref("refs/heads/feature")
        assert [r.name for r in main.list_refs("")] == ["refs/heads/feature", "refs/heads/main"]
        assert main.heads() == bob.heads() == {"HEAD": Head("main", c[1].id), "worktrees/b0b/HEAD": Head("feature", d.id)}
        bob.set_head_detached(c[1].id)
        assert main.head() == Head("main", c[1].id) and bob.head() == Head(None, c[1].id)
        main.delete_ref("refs/heads/feature")  # no HEAD is on it any more
        assert main.verify_all().problems == () and bob.verify_all().problems == ()
        bob.set_head_symbolic("gone")  # unborn, like --orphan: a branch name is enough
        assert bob.verify_all().problems == ()


def test_verify_checks_every_head(shared_url):
    main = Ledger.create(shared_url, INFO)
    bob = Ledger(shared_url, head_name=worktree_head("b0b"))
    with main, bob:
        chain(main, 1)
        bob.add_head()
        with main.transaction() as s:
            s.execute(update(SqlRef).where(SqlRef.name == "worktrees/b0b/HEAD").values(symbolic="refs/tags/v1"))
            s.execute(update(SqlRef).where(SqlRef.name == "refs/heads/main")
                      .values(target=None, symbolic="refs/heads/x"))
        assert main.verify_all().problems == (
            "ref refs/heads/main is symbolic to refs/heads/x, but only a HEAD may be symbolic",
            "ref worktrees/b0b/HEAD is symbolic to refs/tags/v1, which is not a branch",
        )
        bob.remove_head()
        assert "this folder's HEAD worktrees/b0b/HEAD is missing" in bob.verify_all().problems
        with pytest.raises(LedgerError, match="worktrees/b0b/HEAD.*not in the ledger"):
            bob.head()
        with pytest.raises(LedgerError, match="worktrees/b0b/HEAD.*not in the ledger"):
            bob.set_head_symbolic("main")


@pytest.mark.parametrize("name", ["HEAD ", "worktrees/B0B/HEAD", "worktrees//HEAD", "worktrees/a/b/HEAD",
                                  "refs/heads/main", "worktrees/a/HEAD/x"])
def test_bad_head_names_are_refused(name):
    with pytest.raises(RefFormatError):
        Ledger("sqlite://", head_name=name)
    with pytest.raises(RefFormatError):
        worktree_head(name)


@pytest.mark.parametrize("name", ["main", "refs/heads/a b", "refs/heads/a..b", "refs/heads/x.lock", "refs/heads/.x",
                                  "refs/heads/x/", "refs/heads/a~1", "refs/heads/a^", "refs/heads/a:b", "refs/x",
                                  "refs/heads/a@{1}", "refs/heads//a", "refs/heads/x.", "refs/heads/a\tb"])
def test_bad_ref_names_are_refused(name):
    with pytest.raises(RefFormatError, match="invalid ref name"):
        check_ref_name(name)


def test_ref_writes_check_names(ledger):
    c = chain(ledger, 1)
    for call in (lambda: ledger.update_ref("refs/heads/a b", c[0].id, ANY), lambda: ledger.delete_ref("main"),
                 lambda: ledger.set_head_symbolic("a..b"), lambda: ledger.commit_on_branch("x~1", c[0])):
        with pytest.raises(RefFormatError):
            call()
    assert check_ref_name("refs/heads/feature/eiffel-v2") == "refs/heads/feature/eiffel-v2"


def test_an_empty_start_is_refused_not_taken_for_head(ledger):
    """Only None means HEAD: an empty ref string (``--ref=``) is a user error, as in git."""
    chain(ledger, 2)
    for call in (lambda: ledger.log(""), lambda: ledger.blame(subject="x", start="")):
        with pytest.raises(UnknownRefError, match="empty revision"):
            call()


def test_long_first_parent_walks_match_step_by_step(ledger):
    """HEAD~N past the step-by-step range is one recursive query; it must land where N steps do."""
    c = chain(ledger, 30)
    assert [ledger.resolve(f"HEAD~{n}") for n in range(30)] == [x.id for x in reversed(c)]
    assert ledger.resolve("HEAD~12~9") == ledger.resolve("HEAD~21") == c[8].id
    for past in ("HEAD~30", "HEAD~1000"):
        with pytest.raises(UnknownRefError, match="past the root"):
            ledger.resolve(past)


def test_resolve_names_ancestry_and_errors(ledger):
    c = chain(ledger, 5)
    ledger.update_ref("refs/tags/v1", c[1].id, None)
    assert ledger.resolve("HEAD") == ledger.resolve("main") == ledger.resolve("refs/heads/main") == c[4].id
    assert [ledger.resolve(f"HEAD~{n}") for n in range(5)] == [x.id for x in reversed(c)]
    assert ledger.resolve("main~2") == ledger.resolve("HEAD^^") == ledger.resolve("HEAD~1^") == c[2].id
    assert ledger.resolve("v1") == ledger.resolve("refs/tags/v1") == ledger.resolve("v1~0") == c[1].id
    assert ledger.resolve("HEAD^0") == c[4].id
    assert ledger.resolve("HEAD~") == c[3].id
    assert ledger.resolve(c[3].id) == ledger.resolve(c[3].id[:7]) == ledger.resolve(c[3].id[:4] + "~0") == c[3].id
    with pytest.raises(UnknownRefError, match="past the root"):
        ledger.resolve("HEAD~5")
    with pytest.raises(UnknownRefError, match="parent #2"):
        ledger.resolve("HEAD^2")
    for bad in ["nope", "abc", "", "HEAD~x", "~1", "refs/heads/nope", "f" * 64]:
        with pytest.raises(UnknownRefError):
            ledger.resolve(bad)
    ledger.update_ref("refs/heads/v1", c[0].id, None)
    with pytest.raises(AmbiguousRefError) as info:
        ledger.resolve("v1")
    assert info.value.candidates == ("refs/heads/v1", "refs/tags/v1")
    assert isinstance(info.value, RomevcError)


def test_short_id_ambiguity_lists_candidates(ledger):
    seen: dict[str, CommitRecord] = {}
    for i in range(5000):  # deterministic: the first two root commits sharing 4 hex digits
        c = make_commit((), (), f"root {i}", t=i)
        if c.id[:4] in seen:
            pair = (seen[c.id[:4]], c)
            break
        seen[c.id[:4]] = c
    ledger.put_commits(pair)
    prefix = pair[0].id[:4]
    with pytest.raises(AmbiguousRefError, match=prefix) as info:
        ledger.resolve(prefix)
    assert set(info.value.candidates) == {pair[0].id, pair[1].id}
    common = os.path.commonprefix([pair[0].id, pair[1].id])
    assert ledger.resolve(pair[1].id[:len(common) + 1]) == pair[1].id


def test_merge_history_log_ancestry(ledger):
    base = chain(ledger, 2)
    ledger.update_ref("refs/heads/topic", base[1].id, None)
    topic = chain(ledger, 2, branch="topic", start=base[1].id)
    main = chain(ledger, 1, start=base[1].id)
    merge = ledger.commit_on_branch("main", make_commit(
        (main[0].id, topic[1].id), main[0].edit_ids + topic[1].edit_ids[2:], "merge topic", t=100, kind="merge"))
    assert ledger.resolve("HEAD^2") == topic[1].id and ledger.resolve("HEAD^1") == main[0].id
    order = [c.id for c in ledger.log()]
    assert order[0] == merge.id and set(order) == {c.id for c in base + topic + main + [merge]}
    position = {c: i for i, c in enumerate(order)}
    for c in ledger.log():
        assert all(position[c.id] < position[p] for p in c.parents)  # children before parents
    assert [c.id for c in ledger.log(first_parent=True)] == [merge.id, main[0].id, base[1].id, base[0].id]
    assert [c.id for c in ledger.log("topic", limit=2)] == [topic[1].id, topic[0].id]
    assert ledger.is_ancestor(base[0].id, "topic") and not ledger.is_ancestor("topic", "main~1")
    assert ledger.merge_bases("topic", "main~1") == [base[1].id]
    assert ledger.merge_bases("main", "topic") == [topic[1].id]


def test_log_of_ten_thousand_commits_is_fast(ledger):
    edit = make_edit(1)
    ledger.put_edit(edit)
    commits, parent = [], None
    for i in range(10_000):
        parent = make_commit((parent.id,) if parent else (), (edit.id,) if i % 2 else (), f"c{i}", t=i)
        commits.append(parent)
    t = time.perf_counter()
    assert ledger.put_commits(reversed(commits)) == 10_000  # batch order does not matter
    ledger.update_ref("refs/heads/main", commits[-1].id, None)
    stored = time.perf_counter() - t
    t = time.perf_counter()
    history = ledger.log()
    walked = time.perf_counter() - t
    t = time.perf_counter()
    first = ledger.log(first_parent=True, limit=100)
    limited = time.perf_counter() - t
    print(f"\n10,000 commits: put_commits {stored:.2f} s, log {walked:.2f} s, log(first_parent, limit=100) {limited:.3f} s")
    assert [c.id for c in history] == [c.id for c in reversed(commits)]
    assert [c.id for c in first] == [c.id for c in reversed(commits)][:100]
    assert history[0].edit_ids == (edit.id,) and history[1].edit_ids == ()
    assert ledger.resolve("HEAD~20") == commits[-21].id


def test_blame_follows_first_parent_history(ledger):
    eiffel1, eiffel2 = make_edit(1), make_edit(2, target="Paris")
    other = make_edit(3, subject="Colosseum", layer=6)
    ledger.put_edits([eiffel1, eiffel2, other])
    c1 = ledger.commit_on_branch("main", make_commit((), (eiffel1.id,), "eiffel → Rome"))
    c2 = ledger.commit_on_branch("main", make_commit((c1.id,), (eiffel1.id, other.id), "colosseum", t=1))
    c3 = ledger.commit_on_branch("main", make_commit((c2.id,), (other.id,), "revert eiffel", t=2, kind="revert"))
    c4 = ledger.commit_on_branch("main", make_commit((c3.id,), (other.id, eiffel2.id), "eiffel → Paris", t=3))
    got = [(b.commit.id, b.added, b.removed) for b in ledger.blame(subject="The Eiffel Tower")]
    assert got == [(c1.id, (eiffel1.id,), ()), (c3.id, (), (eiffel1.id,)), (c4.id, (eiffel2.id,), ())]
    assert [b.commit.id for b in ledger.blame(layer=6)] == [c2.id]
    assert [b.commit.id for b in ledger.blame(subject="The Eiffel Tower", layer=6)] == []
    assert [b.commit.id for b in ledger.blame(subject="The Eiffel Tower", start="HEAD~2")] == [c1.id]


# -- transactions -----------------------------------------------------------------------

def test_failed_transaction_leaves_the_ledger_unchanged(ledger):
    c = chain(ledger, 1)
    edit = make_edit(9)
    with pytest.raises(RuntimeError):
        with ledger.transaction():
            ledger.put_edit(edit)
            ledger.commit_on_branch("main", make_commit((c[0].id,), (edit.id,), "doomed", t=5))
            ledger.add_remote("origin", "hf://ada/edits")
            raise RuntimeError("crash before commit")
    with pytest.raises(UnknownObjectError):
        ledger.get_edit(edit.id)
    assert ledger.head() == Head("main", c[0].id)
    assert ledger.list_remotes() == []
    # A single call that fails half way stores nothing either.
    good = make_commit((c[0].id,), (), "good", t=6)
    with pytest.raises(UnknownObjectError):
        ledger.put_commits([good, make_commit((good.id,), ("9" * 64,), "bad", t=7)])
    with pytest.raises(UnknownObjectError):
        ledger.get_commit(good.id)
    assert ledger.verify_all().ok


def test_calls_inside_a_transaction_join_it(ledger):
    edit = make_edit(4)
    with ledger.transaction():
        ledger.put_edit(edit)
        c = ledger.commit_on_head(make_commit((), (edit.id,), "edit + commit, atomically"))
        assert ledger.head().commit == c.id  # visible inside the transaction
    assert [e.id for e in ledger.edits_of(ledger.resolve("HEAD"))] == [edit.id]


# -- remotes and statistics -------------------------------------------------------------

def test_remotes(ledger):
    ledger.add_remote("origin", "hf://ada/eiffel-edits")
    with pytest.raises(RemoteExistsError):
        ledger.add_remote("origin", "elsewhere")
    with pytest.raises(RefFormatError):
        ledger.add_remote("bad name", "x")
    ledger.add_remote("backup", "/srv/git/edits.git")
    ledger.set_remote_seen("origin", "main", "a" * 64)
    r = ledger.set_remote_seen("origin", "dev", "b" * 64)
    assert r.seen == {"main": "a" * 64, "dev": "b" * 64} == ledger.get_remote("origin").seen
    assert ledger.set_remote_seen("origin", "dev", None).seen == {"main": "a" * 64}
    assert [x.name for x in ledger.list_remotes()] == ["backup", "origin"]
    ledger.remove_remote("backup")
    with pytest.raises(UnknownRemoteError):
        ledger.get_remote("backup")
    with pytest.raises(UnknownRemoteError):
        ledger.set_remote_seen("backup", "main", "a" * 64)


def test_stats_metadata(ledger):
    meta = StatsMeta(id="c-" + "1" * 16, model_fingerprint="ab" * 32, module="model.layers.4.mlp.down_proj",
                     corpus_id="wikitext-mini", token_count=100_000, location="/cache/stats/c.safetensors", created=5)
    ledger.put_stats_meta(meta)
    assert ledger.get_stats_meta(meta.id) == meta
    moved = dataclasses.replace(meta, location="/elsewhere/c.safetensors")
    ledger.put_stats_meta(moved)  # insert or replace
    assert ledger.list_stats_meta() == [moved]
    with pytest.raises(UnknownObjectError):
        ledger.get_stats_meta("nope")


# -- what every backend stores ---------------------------------------------------------

def test_text_some_backend_cannot_store_is_refused_everywhere(ledger):
    """PostgreSQL enforces String(n) and cannot store NUL; SQLite would take both silently.
    Every backend refuses them the same way, before anything is written."""
    fits = make_edit(1, subject="S" * 512)
    assert ledger.get_edit(ledger.put_edit(fits)).subject == "S" * 512
    too_long = make_edit(2, subject="S" * 513)
    with pytest.raises(UnstorableValueError, match="`subject` is 513 characters long, and the ledger stores at most 512"):
        ledger.put_edits([make_edit(3), too_long])
    with pytest.raises(UnknownObjectError):
        ledger.get_edit(make_edit(3).id)  # the whole batch was refused
    with pytest.raises(UnstorableValueError, match="`message` contains a NUL"):
        ledger.commit_on_branch("main", make_commit((), (fits.id,), "a\x00b"))
    with pytest.raises(UnstorableValueError, match="`author` is 257"):
        ledger.put_commit(CommitRecord.create(parents=(), edit_ids=(), message="m", author="A" * 257, time=T0))
    with pytest.raises(UnstorableValueError, match="`url` contains a NUL"):
        ledger.add_remote("origin", "hf://ada/\x00")
    with pytest.raises(UnstorableValueError, match="`corpus_id`"):
        ledger.put_stats_meta(StatsMeta(id="s", model_fingerprint="f", module="m", corpus_id="c" * 300, token_count=1))
    assert isinstance(UnstorableValueError("x"), RomevcError)  # the CLI prints it on one line
    assert ledger.head() == Head("main", None) and ledger.list_remotes() == [] and ledger.list_stats_meta() == []


def test_listings_sort_by_code_point_and_match_prefixes_exactly(ledger):
    """Not by the server's collation, and not case-insensitively (SQLite's LIKE is)."""
    c = chain(ledger, 1)
    names = ["refs/heads/b", "refs/heads/B", "refs/heads/_x", "refs/heads/a-b", "refs/heads/ab", "refs/heads/é",
             "refs/Heads/upper"]
    for name in names:
        ledger.update_ref(name, c[0].id, None)
    heads = [n for n in names if n.startswith("refs/heads/")] + ["refs/heads/main"]
    assert [r.name for r in ledger.list_refs("refs/heads/")] == sorted(heads)
    assert [r.name for r in ledger.list_refs()] == sorted(heads + ["refs/Heads/upper"])
    for name in ("zed", "Zed", "_x"):
        ledger.add_remote(name, "x")
    assert [r.name for r in ledger.list_remotes()] == ["Zed", "_x", "zed"]


# -- several writers at once ------------------------------------------------------------

def test_concurrent_creates_make_one_ledger(shared_url):
    """Creating the schema takes the write lock: one create wins, the others find a ledger."""
    def create() -> str:
        try:
            Ledger.create(shared_url, INFO).close()
        except LedgerExistsError:
            return "exists"
        return "created"

    with ThreadPoolExecutor(4) as pool:
        results = [done.result() for done in [pool.submit(create) for _ in range(4)]]
    assert sorted(results) == ["created", "exists", "exists", "exists"]
    with Ledger(shared_url) as lg:
        assert lg.repo_info() == INFO and lg.verify_all().ok


def _while_held(ledger: Ledger, body) -> threading.Thread:
    """Run ``body`` in a write transaction of ``ledger`` on another thread, and keep that
    transaction open (uncommitted) for 0.3 s; returns once ``body`` has run."""
    holding = threading.Event()

    def hold():
        with ledger.transaction():
            body()
            holding.set()
            time.sleep(0.3)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait()
    return thread


def test_a_waiting_writer_sees_what_the_first_committed(shared_url):
    """A writer waits for the one in progress and then sees its rows: storing the same edit
    is a no-op (no duplicate key), and read-modify-write keeps both updates (no lost update)."""
    edit = make_edit(7)
    with Ledger.create(shared_url, INFO) as first, Ledger(shared_url) as second:
        first.add_remote("origin", "hf://ada/edits")
        held = _while_held(first, lambda: first.put_edit(edit))
        assert second.put_edit(edit) == edit.id
        held.join()
        held = _while_held(first, lambda: first.set_remote_seen("origin", "a", "a" * 64))
        second.set_remote_seen("origin", "b", "b" * 64)
        held.join()
        assert first.get_remote("origin").seen == {"a": "a" * 64, "b": "b" * 64}
        assert first.verify_all().edits == 1


def test_concurrent_writers_lose_nothing(shared_url):
    """Writers in their own connections store the same edit (no duplicate key), update one
    remote's JSON (no lost update) and commit on their own branches, all at once."""
    with Ledger.create(shared_url, INFO) as lg:
        lg.add_remote("origin", "hf://ada/edits")
    shared_edit = make_edit(42)

    def writer(i: int) -> None:
        with Ledger(shared_url) as lg:
            for round_ in range(3):
                own = make_edit(100 + 10 * i + round_)
                lg.put_edits([shared_edit, own])
                lg.set_remote_seen("origin", f"w{i}-{round_}", own.id)
                tip = lg.get_ref(f"refs/heads/w{i}")
                parent = (tip.target,) if tip else ()
                lg.commit_on_branch(f"w{i}", make_commit(parent, (shared_edit.id, own.id), f"w{i} {round_}",
                                                         t=round_))

    with ThreadPoolExecutor(4) as pool:
        for done in [pool.submit(writer, i) for i in range(4)]:
            done.result()  # re-raises a writer's error here
    with Ledger(shared_url) as lg:
        assert set(lg.get_remote("origin").seen) == {f"w{i}-{r}" for i in range(4) for r in range(3)}
        assert [len(lg.log(f"w{i}")) for i in range(4)] == [3] * 4
        report = lg.verify_all()
        assert report.ok and report.edits == 1 + 12


# -- PostgreSQL -------------------------------------------------------------------------

@pytest.mark.skipif(backends.POSTGRES_URL is None, reason=backends.POSTGRES_SKIP)
def test_an_unreachable_postgres_ledger_is_one_clear_error():
    server = normalise_url(backends.POSTGRES_URL)
    missing = server.set(database="romevc_no_such_database")
    with pytest.raises(LedgerUnavailableError, match="romevc_no_such_database") as info:
        Ledger(missing)
    assert server.password is None or server.password not in str(info.value)
    assert "***" in str(info.value) or server.password is None
    with pytest.raises(NotARepositoryError, match="romevc init"), backends.fresh_postgres_database() as empty:
        Ledger(empty)


@pytest.mark.skipif(backends.POSTGRES_URL is None, reason=backends.POSTGRES_SKIP)
def test_a_postgresql_url_without_a_driver_means_psycopg():
    with backends.fresh_postgres_database() as url:
        bare = normalise_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        assert bare.startswith("postgresql://")
        with Ledger.create(bare, INFO) as lg:
            assert lg._engine.dialect.driver == "psycopg"
            chain(lg, 1)
        with Ledger(url) as lg:
            assert len(lg.log()) == 1


# -- SQLite files -----------------------------------------------------------------------

def test_sqlite_file_open_create_and_wal(tmp_path):
    url = default_url(tmp_path)
    with pytest.raises(NotARepositoryError):
        Ledger(url)
    assert not (tmp_path / ".romevc").exists()  # opening never creates
    with Ledger.create(url, INFO) as lg:
        c = chain(lg, 2)
    with pytest.raises(LedgerExistsError):
        Ledger.create(url, INFO)
    with Ledger(url) as lg:
        assert lg.head() == Head("main", c[1].id) and lg.verify_all().ok
        with lg.transaction() as s:
            assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
    assert set(sa_inspect(Ledger(url)._engine).get_table_names()) >= {"repo", "edits", "commits", "refs"}


def test_writers_wait_for_each_other(shared_url):
    """A second process-like writer waits for the first (SQLite's busy timeout, PostgreSQL's
    advisory write lock), then succeeds."""
    url = shared_url
    with Ledger.create(url, INFO) as first, Ledger(url) as second:
        c = chain(first, 1)
        holding, done = threading.Event(), []

        def hold_the_write_lock():
            with first.transaction():
                first.add_remote("origin", "x")
                holding.set()
                time.sleep(0.3)

        thread = threading.Thread(target=hold_the_write_lock)
        thread.start()
        holding.wait()
        t = time.perf_counter()
        second.update_ref("refs/tags/t", c[0].id, None)
        done.append(time.perf_counter() - t)
        thread.join()
        assert done[0] >= 0.2
        assert second.get_remote("origin").url == "x" and first.get_ref("refs/tags/t").target == c[0].id


def test_layouts_match_the_architecture_table():
    from romevc import architectures

    assert (LAYOUT_LINEAR, LAYOUT_CONV1D) == (architectures.LAYOUT_LINEAR, architectures.LAYOUT_CONV1D)


def _transient_errors(ledger: Ledger) -> list[Exception]:
    """What a busy ledger raises: SQLite's "database is locked" after the busy timeout;
    PostgreSQL's serialization failure, deadlock, or lock timeout (SQLSTATE 40001, 40P01, 55P03)."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    if ledger.url.get_backend_name() == "sqlite":
        return [OperationalError("COMMIT", {}, sqlite3.OperationalError("database is locked"))] * 2
    from psycopg import errors

    return [OperationalError("COMMIT", {}, cls("busy")) for cls in (errors.SerializationFailure,
                                                                     errors.DeadlockDetected,
                                                                     errors.LockNotAvailable)]


def test_a_transient_lock_error_is_retried(ledger):
    """A transient lock error retries the whole transaction, which rolled back each time."""
    from sqlalchemy.exc import IntegrityError

    failures = _transient_errors(ledger)
    assert all(is_locked_error(f) for f in failures)
    assert not is_locked_error(IntegrityError("INSERT", {}, Exception("duplicate key")))
    attempts: list[int] = []

    def op(session):
        session.execute(text("INSERT INTO remotes (name, url, seen_json) VALUES ('origin', 'x', '{}')"))
        attempts.append(1)
        if len(attempts) <= len(failures):
            raise failures[len(attempts) - 1]
        return "done"

    assert ledger._write(op) == "done"
    assert len(attempts) == len(failures) + 1 and [r.name for r in ledger.list_remotes()] == ["origin"]
