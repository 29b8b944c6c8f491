"""Counts the fault suites (crash, concurrency, fuzz, hostile input) report.

pytest hides what tests print unless run with ``-s``; ``conftest.pytest_terminal_summary``
prints what is recorded here at the end of every run, so CI's log shows the counts.
"""
from __future__ import annotations

SECTIONS: dict[str, list[str]] = {}


def report(section: str, *lines: str) -> None:
    """Record ``lines`` under ``section`` for the end-of-run summary (and print them for ``-s``)."""
    SECTIONS.setdefault(section, []).extend(lines)
    print("\n" + "\n".join(lines))
