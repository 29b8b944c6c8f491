"""Run a ``romevc`` command in a forked child and kill it with SIGKILL at a chosen point.

A *point* is a moment where a crash leaves distinct state on disk: before and after
every SQL statement, before and after every COMMIT, whenever a connection goes back to
the pool (after its commit or rollback), halfway through every binary file write, before
every ``fsync``, before and after every ``os.replace``, and when the command has returned. A dry run counts a
command's points; a trial then kills the child at point ``k`` — or after a wall-clock
delay, which also lands in code that has no point (computing an edit, running git).

The child runs the real CLI in-process (``cli.main(args, standalone_mode=False)``), in
its own process group, so git subprocesses die with it. Its clock is frozen so commit ids
are reproducible: a trial's outcome can be compared with the exact commit the dry run
made. Fork is cheap here (the parent has imported torch and transformers already); the
parent and child both run torch on one thread, since fork keeps no thread pool.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path

FROZEN_TIME = 1_700_000_000  # every commit a child makes is dated here, so its ids are reproducible


@dataclass(frozen=True)
class ChildRun:
    exit_code: int | None  # None: killed
    points: tuple[str, ...]  # the labels of the points passed, when the run was not killed
    seconds: float
    log: str  # what the command printed


class _Points:
    """Counts points in the child; SIGKILLs the child's process group at point ``kill_at``."""

    def __init__(self, kill_at: int | None) -> None:
        self.kill_at = kill_at
        self.labels: list[str] = []

    def __call__(self, label: str) -> None:
        self.labels.append(label)
        if len(self.labels) == self.kill_at:
            os.killpg(0, signal.SIGKILL)

    def install(self) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine
        from sqlalchemy.orm import Session
        from sqlalchemy.pool import Pool

        def sql(when: str):
            return lambda _conn, _cursor, statement, *_rest: self(f"{when} {statement.split()[0].upper()}")

        event.listen(Engine, "before_cursor_execute", sql("before"))
        event.listen(Engine, "after_cursor_execute", sql("after"))
        event.listen(Engine, "commit", lambda _conn: self("before COMMIT"))
        event.listen(Session, "after_commit", lambda _session: self("after COMMIT"))
        event.listen(Pool, "checkin", lambda *_args: self("checkin"))
        real_replace, real_fsync, real_fdopen = os.replace, os.fsync, os.fdopen

        def replace(*args, **kwargs):
            self("before rename")
            real_replace(*args, **kwargs)
            self("after rename")

        def fsync(fd):
            self("fsync")
            real_fsync(fd)

        def fdopen(fd, mode="r", *args, **kwargs):
            f = real_fdopen(fd, mode, *args, **kwargs)
            if "w" in mode and "b" in mode:
                f.write = self._halting(f)
            return f

        os.replace, os.fsync, os.fdopen = replace, fsync, fdopen

    def _halting(self, f):
        """``f.write`` with a point halfway through the bytes (a torn write)."""
        write = type(f).write.__get__(f)

        def halfway(data):
            half = len(data) // 2
            write(data[:half])
            f.flush()
            self("half written")
            return half + write(data[half:])
        return halfway


def _freeze_clock() -> None:
    from romevc.porcelain import config

    config._time = types.SimpleNamespace(time=lambda: float(FROZEN_TIME), localtime=time.localtime)


def _child(args: list[str], cwd: Path, kill_at: int | None, out: Path) -> int:
    """The child's whole life: set up, run the command, report the points passed."""
    import torch

    from romevc.cli import cli

    os.setpgid(0, 0)
    torch.set_num_threads(1)
    log = os.open(out.with_suffix(".log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the child ends with os._exit
    sys.stderr = sys.stdout
    os.chdir(cwd)
    scratch = cwd.parent / f".{cwd.name}-tmp"
    scratch.mkdir(exist_ok=True)
    tempfile.tempdir = str(scratch)  # git's scratch repositories stay beside the trial
    _freeze_clock()
    points = _Points(kill_at)
    points.install()
    code = 0
    try:
        cli.main(args, standalone_mode=False, prog_name="romevc")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001 - report any failure through the exit code
        print(f"{type(exc).__name__}: {exc}", flush=True)
        code = 1
    points("returned")
    sys.stdout.flush()
    out.write_text("\n".join(points.labels))
    return code


def run_child(args: list[str], cwd: Path, *, kill_at: int | None = None, kill_after: float | None = None) -> ChildRun:
    """Run ``romevc ARGS`` in ``cwd`` in a forked child, killed at point ``kill_at`` or after
    ``kill_after`` seconds (neither: it runs to the end)."""
    out = cwd.parent / f".{cwd.name}-points"
    out.unlink(missing_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _child(args, cwd, kill_at, out)
        finally:
            os._exit(code)
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)  # also here, so a kill right after fork finds the group
    status = None
    if kill_after is not None:
        deadline = start + kill_after
        while status is None and time.perf_counter() < deadline:
            done, code = os.waitpid(pid, os.WNOHANG)
            status = code if done else None
            time.sleep(0.002)
        if status is None:
            os.killpg(pid, signal.SIGKILL)
    if status is None:
        status = os.waitpid(pid, 0)[1]
    seconds = time.perf_counter() - start
    killed = os.WIFSIGNALED(status)
    log_file = out.with_suffix(".log")
    log = log_file.read_text(errors="replace") if log_file.exists() else ""
    points = tuple(out.read_text().splitlines()) if out.exists() else ()
    return ChildRun(None if killed else os.WEXITSTATUS(status), points, seconds, log)
