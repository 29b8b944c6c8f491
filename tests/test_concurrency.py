"""Several processes writing to one repository at once lose no commit and no branch move.

At the ledger, a branch moves only by compare-and-swap: a writer whose branch moved
under it gets :class:`RefConflictError` (git's non-fast-forward) and stores nothing. At
the porcelain, ``edit`` turns that refusal into a recompute on the new tip (see
:mod:`romevc.porcelain.writers`), so two or four ``romevc edit`` processes started
together all land every edit, each computed on the weights it ends up on.
"""
from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from romevc.cli import cli
from romevc.editing.request import EditRequest
from romevc.ledger import CommitRecord, Ledger, RefConflictError, default_url
from romevc.porcelain.writers import COMMIT_ATTEMPTS
from romevc.repo import Repo
from tests.fault_report import report as report_counts
from tests.tiny_facts import AUTHOR, FACTS, FIXTURE, A, B

pytestmark = pytest.mark.usefixtures("one_thread")

FORK = multiprocessing.get_context("fork")  # workers start at once, with everything imported
EDITS_PER_PROCESS = 3
RETRY_NOTICE = "recomputing on its new tip"
CITIES = sorted({f["target"] for f in FACTS if f["relation"] == "city"})


def requests(count: int) -> list[EditRequest]:
    """``count`` city facts of different people, each moved to another city."""
    facts = [f for f in FACTS if f["relation"] == "city"][:count]
    return [EditRequest(f["prompt"], f["subject"], next(c for c in CITIES[i % len(CITIES):] + CITIES
                                                        if c != f["target"])) for i, f in enumerate(facts)]


def init_repo(root: Path, tiny) -> Path:
    with Repo.init(root, str(FIXTURE), loaded=tiny, author=AUTHOR, stats_corpus=str(FIXTURE / "corpus.txt"),
                   stats_tokens=3000, stats_root=str(root.parent / "stats"), time=0):
        pass
    return root


def verified(root: Path) -> dict:
    result = CliRunner().invoke(cli, ["verify", "--json", "--repo", str(root)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- the ledger: a compare-and-swap never overwrites ----------------------------------------------------------

def _racing_committer(url: str, writer: int, rounds: int, barrier, results) -> None:
    """Each round: read the tip with everyone, then all commit on it at once."""
    won = []
    with Ledger(url) as ledger:
        for round_ in range(rounds):
            barrier.wait()
            tip = ledger.head().commit
            barrier.wait()
            record = CommitRecord.create(parents=[tip] if tip else [], edit_ids=[], message=f"w{writer} r{round_}",
                                         author=AUTHOR, time=round_, tz=0, kind="edit")
            try:
                ledger.commit_on_branch("main", record)
                won.append((round_, record.id))
            except RefConflictError:
                pass
    results.put((writer, won))


@pytest.mark.parametrize("processes", [2, 4])
def test_a_branch_moved_under_a_writer_is_refused_never_overwritten(processes, tmp_path, tiny):
    """Writers that all read the same tip race to commit on it: exactly one wins each round;
    the others get RefConflictError and store nothing, so no commit is lost or orphaned."""
    root, rounds = init_repo(tmp_path / "repo", tiny), 8
    barrier, results = FORK.Barrier(processes), FORK.Queue()
    workers = [FORK.Process(target=_racing_committer, args=(default_url(root), w, rounds, barrier, results))
               for w in range(processes)]
    for w in workers:
        w.start()
    won = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    winners = sorted((round_, commit) for _, rows in won for round_, commit in rows)
    assert [round_ for round_, _ in winners] == list(range(rounds))  # one winner per round, never two
    with Ledger(default_url(root)) as ledger:
        assert [c.id for c in ledger.log("main")][::-1] == [commit for _, commit in winners]
        report = ledger.verify_all()
        assert report.ok and report.commits == rounds  # the losers stored nothing
    report_counts("concurrent writers", f"CAS race: {processes} processes, {rounds} rounds, {rounds} commits, "
           f"{rounds * (processes - 1)} refused with RefConflictError")


# -- the porcelain: every edit of every process lands -----------------------------------------------------------

def _editor_process(root: Path, todo: list[EditRequest], barrier, log: Path) -> None:
    """``romevc edit`` for each request, as a separate user would run it (output to ``log``)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
    logging.root.handlers.clear()  # pytest's capture handlers came along with fork; the CLI sets up its own
    torch.set_num_threads(1)
    barrier.wait()
    for request in todo:
        cli.main(["edit", "--prompt", request.prompt, "--subject", request.subject, "--target", request.target_new,
                  "--repo", str(root)], standalone_mode=False, prog_name="romevc")


@pytest.mark.parametrize("processes", [2, 4])
def test_concurrent_edits_all_land_once(processes, tmp_path, tiny):
    root = init_repo(tmp_path / "repo", tiny)
    todo = requests(processes * EDITS_PER_PROCESS)
    barrier = FORK.Barrier(processes)
    logs = [tmp_path / f"process-{p}.log" for p in range(processes)]
    workers = [FORK.Process(target=_editor_process,
                            args=(root, todo[p::processes], barrier, logs[p])) for p in range(processes)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    outputs = [log.read_text() for log in logs]
    for w, output in zip(workers, outputs):
        assert w.exitcode == 0, output
        assert "database is locked" not in output and "error" not in output.lower() and "Traceback" not in output
    retries = sum(output.count(RETRY_NOTICE) for output in outputs)

    report = verified(root)
    assert report["commits"] == report["edits"] == len(todo)  # nothing stored by a lost attempt
    with Repo.open(root) as repo:
        history = repo.log("main", first_parent=True)[::-1]
        records = repo.records("main")
        assert [len(c.edit_ids) for c in history] == list(range(1, len(todo) + 1))  # one edit per commit
        assert all(c.edit_ids[:-1] == prev.edit_ids for prev, c in itertools.pairwise(history))  # none dropped
        assert sorted((r.request["subject"], r.request["target_new"]) for r in records) == \
            sorted((r.subject, r.target_new) for r in todo)  # every edit, exactly once
        assert not any(repo.stale(records))  # each computed on the weights it landed on
    report_counts("concurrent writers", f"concurrent edits: {processes} processes, {len(history)} commits, {retries} retries "
           f"(recomputed on a moved branch)")


# -- the retry itself, step by step ------------------------------------------------------------------------------

def someone_commits_during_first(ours: Repo, theirs: Repo, method: str) -> list[str]:
    """Make ``ours.workspace.<method>`` let ``theirs`` commit an edit of A while our first attempt
    computes; returns the list that then holds the commit they made."""
    compute, moved = getattr(ours.workspace, method), []

    def compute_while_someone_commits(*args, **kwargs):
        if not moved:
            moved.append(theirs.edit(A, time=1).commit.id)
        return compute(*args, **kwargs)

    setattr(ours.workspace, method, compute_while_someone_commits)
    return moved


def test_an_edit_whose_branch_moved_is_recomputed_on_the_new_tip(tmp_path, tiny, caplog):
    root = init_repo(tmp_path / "repo", tiny)
    with Repo.open(root, loaded=tiny) as ours, Repo.open(root, loaded=tiny) as theirs:
        moved = someone_commits_during_first(ours, theirs, "compute")
        with caplog.at_level(logging.WARNING, logger="romevc"):
            made = ours.edit(B, time=2)
        assert tuple(made.commit.parents) == (moved[0],)
        assert [r.request["subject"] for r in ours.records("main")] == [A.subject, B.subject]
        assert not any(ours.stale(ours.records("main")))
        assert f"main moved while the edit was computed; {RETRY_NOTICE} {moved[0][:7]} (attempt 2 of" in caplog.text
        assert ours.verify().ok and ours.verify().report.commits == 2


def test_a_branch_that_keeps_moving_gives_up_and_writes_nothing(tmp_path, tiny):
    """A writer the commit lock cannot see (another machine) moves the branch during every attempt."""
    root = init_repo(tmp_path / "repo", tiny)
    with Repo.open(root, loaded=tiny) as ours, Ledger(default_url(root)) as elsewhere:
        compute, tips = ours.workspace.compute, []

        def compute_while_the_branch_moves(*args, **kwargs):
            tip = elsewhere.head().commit
            record = CommitRecord.create(parents=[tip] if tip else [], edit_ids=[], message=f"elsewhere {len(tips)}",
                                         author=AUTHOR, time=len(tips), tz=0, kind="edit")
            tips.append(elsewhere.commit_on_branch("main", record).id)
            return compute(*args, **kwargs)

        ours.workspace.compute = compute_while_the_branch_moves
        with pytest.raises(RefConflictError, match=f"main kept moving: {COMMIT_ATTEMPTS} attempts"):
            ours.edit(A, time=1)
        assert len(tips) == COMMIT_ATTEMPTS and ours.ledger.head().commit == tips[-1]
        report = ours.verify().report
        assert report.ok and report.commits == COMMIT_ATTEMPTS and report.edits == 0
