"""SIGKILL in the middle of ``edit``, ``merge``, ``revert`` and ``pull`` never leaves a broken ledger.

Each scenario's repository is prepared once on the tiny GPT-2 fixture; every trial copies
it, runs the real command in a forked child (:mod:`tests.crash_harness`) and kills the child
at a point drawn from a seeded generator — half over all of the command's points, half over
the stretch where it writes — or after a random delay. Then ``romevc verify`` must pass,
SQLite's own integrity check must pass, and the ledger must hold either all of the
operation or none of it: the branch at the old tip with the old objects, or at exactly the
commit the uncrashed command makes, with exactly its objects. ``pull`` is git's two steps,
fetch then merge, each all-or-nothing, so it may also stop in between ("fetched": the
remote-tracking ref and the fetched commits are in, the branch has not moved). A trial that
ended before the operation is then finished by running the command again, which must make
the very commit the uncrashed run made.

``edit (cold)`` runs without cached statistics, so the kill can also land halfway through
writing the statistics file; whatever is visible under the file's own name afterwards must be
the complete file.
"""
from __future__ import annotations

import contextlib
import json
import random
import shutil
import sqlite3
import subprocess
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from romevc.cli import cli
from romevc.editing.stats import StatsCache
from romevc.errors import RomevcError
from romevc.porcelain.config import CONFIG_FILE, DOT_DIR, RepoConfig
from romevc.remotes import sync
from romevc.remotes.exports import export
from romevc.repo import Repo
from tests.crash_harness import run_child
from tests.fault_report import report as report_counts
from tests.tiny_facts import AUTHOR, FIXTURE, A, B, C, D

pytestmark = pytest.mark.usefixtures("one_thread")

SEED = 20240607
TIMED_SHARE = 0.25  # trials killed after a random delay instead of at a point
TRIALS = {"edit": 26, "edit (cold)": 8, "revert": 22, "merge": 22, "pull": 26}
FINISH_EVERY = 5  # one in this many trials that stopped short is finished by running the command again
EDIT_D = ("edit", "--prompt", D.prompt, "--subject", D.subject, "--target", D.target_new)


@dataclass(frozen=True)
class State:
    """What a trial is judged by: the branch tips and how many objects the ledger holds."""

    tip: str | None  # refs/heads/main
    commits: int
    edits: int
    tracking: str | None  # refs/remotes/origin/feature


@dataclass(frozen=True)
class Scenario:
    name: str
    command: str  # edit, revert, merge or pull
    repo: Path  # prepared once, only ever copied
    args: tuple[str, ...]
    cold_stats: bool = False


@dataclass(frozen=True)
class DryRun:
    before: State
    after: State
    points: tuple[str, ...]
    seconds: float

    @property
    def fetched(self) -> State:
        """``pull`` between its fetch and its merge: the merge commit is the one object missing."""
        return replace(self.before, commits=self.after.commits - 1, edits=self.after.edits, tracking=self.after.tracking)

    def spans(self) -> tuple[range, range, range]:
        """Point numbers to draw a kill from: all of them; from the BEGIN of the first transaction
        that writes to the end; the last COMMIT with the points just around it."""
        first = next(i for i, p in enumerate(self.points) if p.split()[-1] in ("INSERT", "UPDATE", "DELETE"))
        begin = max(i for i in range(first) if self.points[i] == "before BEGIN")
        commit = max(i for i, p in enumerate(self.points) if p == "before COMMIT")
        end = len(self.points) + 1
        return range(1, end), range(begin + 1, end), range(commit - 1, end)


# -- preparing the scenarios -----------------------------------------------------------------------------------

def state_of(repo: Path) -> State:
    """The ledger as a trial left it, once SQLite's integrity check and ``romevc verify`` pass."""
    result = CliRunner().invoke(cli, ["verify", "--json", "--repo", str(repo)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and not report["problems"]
    with contextlib.closing(sqlite3.connect(repo / DOT_DIR / "ledger.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = db.execute("SELECT name, target, symbolic FROM refs").fetchall()
    refs = {name: (target, symbolic) for name, target, symbolic in rows}
    assert refs["HEAD"] == (None, "refs/heads/main"), "HEAD left its branch"
    return State(refs["refs/heads/main"][0], report["commits"], report["edits"],
                 refs.get("refs/remotes/origin/feature", (None, None))[0])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny) -> tuple[Path, dict[str, Scenario]]:
    """Repositories on the tiny model with statistics cached: ``main`` (A, B on main; feature = A + C)
    and ``pull`` (A, B on main, remote ``origin`` a bare git repository whose ``feature`` is A + C)."""
    root = tmp_path_factory.mktemp("crash")
    with Repo.init(root / "main", str(FIXTURE), loaded=tiny, author=AUTHOR, stats_corpus=str(FIXTURE / "corpus.txt"),
                   stats_tokens=3000, stats_root=str(root / "stats"), time=0) as repo:
        repo.edit(A, time=1)
        repo.edit(B, time=2)
    for name in ("pull", "publisher"):
        shutil.copytree(root / "main", root / name)
    subprocess.run(["git", "init", "-q", "--bare", str(root / "remote.git")], check=True)
    for name in ("main", "publisher"):
        with Repo.open(root / name, loaded=tiny) as repo:
            repo.checkout("HEAD~1", create="feature")
            repo.edit(C, time=3)
            if name == "publisher":
                sync.add_remote(repo, "origin", str(root / "remote.git"))
                sync.push(repo, "origin", "feature")
            repo.checkout("main")
    with Repo.open(root / "pull") as repo:
        sync.add_remote(repo, "origin", str(root / "remote.git"))
    scenarios = {
        "edit": Scenario("edit", "edit", root / "main", EDIT_D),
        "edit (cold)": Scenario("edit (cold)", "edit", root / "main", EDIT_D, cold_stats=True),
        "revert": Scenario("revert", "revert", root / "main", ("revert", "HEAD~1")),
        "merge": Scenario("merge", "merge", root / "main", ("merge", "feature")),
        "pull": Scenario("pull", "pull", root / "pull", ("pull", "origin", "feature")),
    }
    return root, scenarios


def copy_for_trial(scenario: Scenario, work: Path) -> Path:
    shutil.copytree(scenario.repo, work)
    if scenario.cold_stats:  # statistics of its own, not computed yet
        config_path = work / DOT_DIR / CONFIG_FILE
        replace(RepoConfig.read(config_path), stats_root=str(work.parent / f"{work.name}-stats")).write(config_path)
    return work


def dry_run(scenario: Scenario, work: Path) -> DryRun:
    copy_for_trial(scenario, work)
    before = state_of(work)
    run = run_child(list(scenario.args), work)
    assert run.exit_code == 0, run.log
    after = state_of(work)
    assert after.tip != before.tip and after.commits == before.commits + (1 if scenario.command != "pull" else 2)
    return DryRun(before, after, run.points, run.seconds)


# -- judging a trial ---------------------------------------------------------------------------------------------

def outcome(scenario: Scenario, dry: DryRun, state: State) -> str:
    """"none", "fetched" (pull only) or "whole"; anything else fails the test."""
    if state == dry.before:
        return "none"
    if scenario.command == "pull" and state == dry.fetched:
        return "fetched"
    assert state == dry.after, f"neither none nor whole of {scenario.name}: {state} (before {dry.before}, " \
                               f"after {dry.after})"
    return "whole"


def check_statistics(work: Path, reference: Path) -> None:
    """Every statistics file visible under its own name is complete: it loads, and holds the
    same key and tensors as the one cached by the uncrashed run."""
    folder = work.parent / f"{work.name}-stats"
    for path in folder.glob("*") if folder.exists() else ():
        if path.name.startswith("."):
            assert path.name.endswith(".tmp"), path  # an unfinished write, which nobody reads
            continue
        got, want = load_safetensors(path), load_safetensors(reference / path.name)
        assert got[0] == want[0] and got[1].keys() == want[1].keys()
        assert all(torch.equal(got[1][k], want[1][k]) for k in want[1]), f"{path.name} is not the complete file"


def load_safetensors(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict


def test_sigkill_leaves_none_or_all_of_the_operation(prepared, tmp_path):
    root, scenarios = prepared
    rng = random.Random(SEED)
    dry = {name: dry_run(s, tmp_path / f"dry-{i}") for i, (name, s) in enumerate(scenarios.items())}
    tally: dict[str, Counter] = {name: Counter() for name in scenarios}
    for name, count in TRIALS.items():
        scenario, expected = scenarios[name], dry[name]
        for i in range(count):
            work = copy_for_trial(scenario, tmp_path / f"{name.split()[0]}-{i}")
            if rng.random() < TIMED_SHARE:
                delay = rng.uniform(0, 1.2 * expected.seconds)
                how, run = "timed", run_child(list(scenario.args), work, kill_after=delay)
            else:
                span = rng.choices(expected.spans(), weights=(4, 3, 3))[0]
                how, run = "point", run_child(list(scenario.args), work, kill_at=rng.choice(span))
            assert run.exit_code in (None, 0), run.log
            result = outcome(scenario, expected, state_of(work))
            if scenario.cold_stats:
                check_statistics(work, root / "stats")
            tally[name].update([how, result, f"{result} at a point" if how == "point" else f"{result} timed"])
            if result != "whole" and i % FINISH_EVERY == 0:  # finish the job: the very commit of the uncrashed run
                again = run_child(list(scenario.args), work)
                assert again.exit_code == 0, again.log
                assert state_of(work) == expected.after
                if scenario.cold_stats:
                    check_statistics(work, root / "stats")
                tally[name]["finished"] += 1
            shutil.rmtree(work)
    total = sum(sum(t[k] for k in ("point", "timed")) for t in tally.values())
    report_counts("crash safety", f"crash trials (seed {SEED}): {total}", *(
        f"  {name:12} {t['point'] + t['timed']:3} trials ({t['point']} at a point, {t['timed']} timed): "
        f"none {t['none']}, fetched {t['fetched']}, whole {t['whole']}; finished by a rerun {t['finished']}"
        for name, t in tally.items()))
    assert total >= 100
    for name, t in tally.items():
        assert t["none at a point"] and t["whole at a point"], f"{name}: no kill at a point on each side of the commit"
    assert tally["pull"]["fetched at a point"], "no pull was killed between its fetch and its merge"


# -- files beside the ledger ---------------------------------------------------------------------------------------

def test_a_statistics_write_killed_halfway_is_never_loaded(prepared, tmp_path, tiny):
    """The kill lands halfway through writing the statistics file: only a hidden temporary
    holds the half, and the next edit recomputes the statistics and makes the same commit."""
    root, scenarios = prepared
    scenario = scenarios["edit (cold)"]
    expected = dry_run(scenario, tmp_path / "dry")
    work = copy_for_trial(scenario, tmp_path / "trial")
    kill_at = expected.points.index("half written") + 1
    assert run_child(list(scenario.args), work, kill_at=kill_at).exit_code is None
    stats = tmp_path / "trial-stats"
    halves = list(stats.iterdir())
    assert len(halves) == 1 and halves[0].name.startswith(".") and halves[0].name.endswith(".tmp")
    complete = next((root / "stats").glob("*.safetensors"))
    assert 0 < halves[0].stat().st_size < complete.stat().st_size
    assert state_of(work) == expected.before

    again = run_child(list(scenario.args), work)
    assert again.exit_code == 0, again.log
    assert state_of(work) == expected.after
    check_statistics(work, root / "stats")
    assert (stats / complete.name).is_file()


def test_a_killed_init_leaves_no_half_repository(tmp_path, tiny):
    """Killed anywhere from its ledger's COMMIT on, ``romevc init`` leaves either no repository
    or a whole one; where none, running it again makes one."""
    args = ["init", "--base", str(FIXTURE), "--author", "Ada"]
    (tmp_path / "dry").mkdir()
    dry = run_child(args, tmp_path / "dry")
    assert dry.exit_code == 0, dry.log
    start = dry.points.index("before CREATE")
    chosen = [k for k, label in enumerate(dry.points, start=1) if k > start and label in (
        "before COMMIT", "after COMMIT", "half written", "fsync", "before rename", "after rename", "returned")]
    assert len(chosen) >= 6
    whole = 0
    for k in chosen:
        work = tmp_path / f"k{k}"
        work.mkdir()
        assert run_child(args, work, kill_at=k).exit_code is None
        if (work / DOT_DIR).exists():
            whole += 1  # then it is complete: it opens and verifies
        else:
            assert all(p.name.startswith(".romevc-init-") for p in work.iterdir())  # only the hidden stage
            again = run_child(args, work)
            assert again.exit_code == 0, again.log
        result = CliRunner().invoke(cli, ["verify", "--repo", str(work)])
        assert result.exit_code == 0 and result.stdout.endswith("ok\n"), result.output
    assert 0 < whole < len(chosen)


def test_a_torn_statistics_file_is_recomputed_not_trusted(tmp_path, tiny):
    """A statistics file cut anywhere (a writer that did not rename) is refused and replaced."""
    cache = StatsCache(root=tmp_path, corpus=str(FIXTURE / "corpus.txt"), n_tokens=1000, progress=False)
    first = cache.get(tiny.model, tiny.tokenizer, 1)
    path = cache.path(first.key)
    whole = path.read_bytes()
    for cut in (len(whole) // 3, len(whole) - 8):
        path.write_bytes(whole[:cut])
        fresh = StatsCache(root=tmp_path, corpus=str(FIXTURE / "corpus.txt"), n_tokens=1000, progress=False)
        assert torch.equal(fresh.get(tiny.model, tiny.tokenizer, 1).mom2, first.mom2)
        assert len(path.read_bytes()) == len(whole)  # written whole again


@pytest.mark.parametrize("what", ["config", "statistics", "export full", "export peft", "export romevc"])
def test_a_write_that_fails_before_its_rename_leaves_nothing_under_the_name(what, prepared, tmp_path, tiny,
                                                                             monkeypatch):
    """Every file beside the ledger is written under a temporary name and renamed: fail the
    final rename and the old file (or no file) is all there is, with no temporary left."""
    root, _ = prepared
    config_path = tmp_path / "config.json"
    RepoConfig(author="old").write(config_path)
    shutil.copytree(root / "main", tmp_path / "repo")
    repo = Repo.open(tmp_path / "repo", loaded=tiny,
                     stats=StatsCache(root=tmp_path / "stats", corpus=str(FIXTURE / "corpus.txt"), n_tokens=3000,
                                      progress=False))
    write = {
        "config": lambda: RepoConfig(author="new").write(config_path),
        "statistics": lambda: repo.workspace.editor.stats.get(tiny.model, tiny.tokenizer, 1),
        "export full": lambda: export(repo, "main", tmp_path / "out", "full"),
        "export peft": lambda: export(repo, "main", tmp_path / "out", "peft"),
        "export romevc": lambda: export(repo, "main", tmp_path / "out", "romevc"),
    }[what]
    repo.model("main")  # materialise first: only the write itself meets the failing rename

    def beside() -> list[Path]:  # files but the repository's own (the ledger's -wal and -shm come and go)
        return sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")
                      if p.is_file() and p.relative_to(tmp_path).parts[0] != "repo")

    before = beside()

    def no_rename(*_args, **_kwargs):
        raise OSError("simulated crash at the rename")

    monkeypatch.setattr("os.replace", no_rename)
    try:
        with pytest.raises((OSError, RomevcError), match="simulated crash"):  # exports say which folder
            write()
    finally:
        monkeypatch.undo()
        repo.close()
    assert beside() == before
    assert RepoConfig.read(config_path).author == "old"
