"""Several writers on one branch: compute without a lock, and queue after losing a race.

A computing verb (``edit``, ``edit --batch``, ``apply``) computes on the branch tip and
commits with a compare-and-swap, so a writer that lost the race never overwrites anyone:
the ledger raises :class:`RefConflictError`, like git refusing a non-fast-forward. The
verb then recomputes on the new tip and tries again, at most :data:`COMMIT_ATTEMPTS`
times in all, logging a notice each time.

Racing again would waste work: when four processes edit one branch, each round only one
of them wins and the rest recompute for nothing, and an unlucky one can lose every round.
So a writer that lost once queues on the ledger's :class:`CommitLock` and recomputes
while holding it. Every commit through ``Repo._write`` takes the same lock, so while a
queued writer holds it, no other writer on this machine can commit: its next attempt
lands. Writers the lock cannot see (another machine sharing a PostgreSQL ledger) still
only retry.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from romevc.ledger import Ledger
from romevc.ledger.engine import sqlite_path
from romevc.ledger.errors import RefConflictError

try:
    import fcntl
except ImportError:  # Windows: no flock; writers there only retry
    fcntl = None

log = logging.getLogger(__name__)
T = TypeVar("T")

COMMIT_ATTEMPTS = 5  # tries of a computing verb whose branch keeps moving under it
LOCK_SUFFIX = ".commit-lock"  # beside ledger.db; only ever flock()ed, its content means nothing


class CommitLock:
    """A blocking lock shared by every process that commits to one SQLite ledger file.

    It is an ``flock`` on ``<ledger file>.commit-lock``. The kernel drops it when its
    process dies, so a killed ``romevc`` never leaves it held (unlike a lock file whose
    existence is the lock). Reentrant within one ``Repo``. Without a ledger file (another
    backend) or without ``fcntl`` it does nothing.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path if fcntl is not None else None
        self._fd: int | None = None
        self._depth = 0

    @classmethod
    def of(cls, ledger: Ledger) -> CommitLock:
        db = sqlite_path(ledger.url)
        return cls(db.with_name(db.name + LOCK_SUFFIX) if db is not None else None)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self.path is None:
            yield
            return
        if self._depth == 0:
            self._fd = self._acquire(self.path)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                os.close(self._fd)  # closing the descriptor releases the flock
                self._fd = None

    @staticmethod
    def _acquire(path: Path) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another romevc writer on this ledger to commit")
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd


def commit_on_moving_branch(attempt: Callable[[str | None], T], tip_of: Callable[[], str | None],
                            lock: CommitLock, *, branch: str, what: str) -> T:
    """``attempt(tip)`` on the branch's current tip; each time it raises :class:`RefConflictError`
    (another writer committed first), again on the new tip, queued on ``lock``.

    ``attempt`` must compute everything from ``tip`` and write in one transaction, so a
    lost attempt wrote nothing.
    """
    try:
        return attempt(tip_of())
    except RefConflictError:
        pass
    with lock.held():
        for number in range(2, COMMIT_ATTEMPTS + 1):
            tip = tip_of()
            log.warning("%s moved while %s was computed; recomputing on its new tip %s (attempt %d of %d)",
                        branch, what, (tip or "(unborn)")[:7], number, COMMIT_ATTEMPTS)
            try:
                return attempt(tip)
            except RefConflictError:
                continue
    raise RefConflictError(f"{branch} kept moving: {COMMIT_ATTEMPTS} attempts to commit {what} each found a newer "
                           "tip; nothing was written; run the command again")
