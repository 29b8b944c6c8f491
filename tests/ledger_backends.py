"""The backends the ledger tests run on: SQLite always, PostgreSQL when ROMEVC_TEST_POSTGRES_URL is set.

``ROMEVC_TEST_POSTGRES_URL`` names a database on a server whose role may create databases,
e.g. ``postgresql+psycopg://romevc:secret@127.0.0.1:5432/romevc_test`` (``.ci/run`` starts
such a server). The tests never write to that database: each test gets a fresh one beside
it, ``romevc_test_<random hex>``, dropped afterwards (PostgreSQL 13 or newer), so no test
sees another's rows and a failed run leaves nothing behind.

:data:`RAN` counts the tests run on each backend; the terminal summary in ``conftest.py``
prints it, so a run says whether PostgreSQL was covered or skipped.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from romevc.ledger import default_url
from romevc.ledger.engine import make_engine, normalise_url

POSTGRES_URL = os.environ.get("ROMEVC_TEST_POSTGRES_URL") or None
POSTGRES_SKIP = "PostgreSQL ledger tests need ROMEVC_TEST_POSTGRES_URL (a database whose role may create databases)"

BACKENDS = ["sqlite-file", "sqlite-memory", "postgresql"]  # every ledger contract test runs on each
SHARED_BACKENDS = ["sqlite-file", "postgresql"]  # several connections, threads or processes at once

RAN: Counter[str] = Counter()


def backend_params(backends: list[str]) -> list[str]:
    """The ``backends`` a parametrised test runs on: PostgreSQL only with ROMEVC_TEST_POSTGRES_URL.

    Without it the PostgreSQL cases are left out rather than skipped one by one (dozens of
    identical skip lines); the terminal summary says once that PostgreSQL did not run.
    """
    return [b for b in backends if b != "postgresql" or POSTGRES_URL is not None]


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """The URL of a new, empty database next to ``ROMEVC_TEST_POSTGRES_URL``, dropped on exit."""
    assert POSTGRES_URL is not None, POSTGRES_SKIP
    RAN["postgresql"] += 1  # every PostgreSQL test makes one database
    server = normalise_url(POSTGRES_URL)
    name = f"romevc_test_{secrets.token_hex(6)}"
    engine = make_engine(server)
    admin = engine.execution_options(isolation_level="AUTOCOMMIT")  # CREATE DATABASE refuses a transaction
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:  # FORCE: a test that left a connection open still gets cleaned up
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        engine.dispose()


@contextlib.contextmanager
def ledger_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL where no ledger exists yet, on ``backend``; counted in :data:`RAN`."""
    if backend == "sqlite-file":
        RAN[backend] += 1
        yield default_url(tmp_path)
    elif backend == "sqlite-memory":
        RAN[backend] += 1
        yield "sqlite://"
    elif backend == "postgresql":
        with fresh_postgres_database() as url:
            yield url
    else:
        raise ValueError(f"unknown ledger backend {backend!r}")


def summary() -> str | None:
    """One line for the terminal summary: the backends the ledger tests ran on (None: none ran)."""
    if not RAN:
        return None
    ran = ", ".join(f"{b} ({RAN[b]} tests)" for b in BACKENDS if RAN[b])
    if POSTGRES_URL is None:
        return f"ledger backends: {ran}; postgresql skipped: ROMEVC_TEST_POSTGRES_URL is not set"
    server = normalise_url(POSTGRES_URL).render_as_string(hide_password=True)
    return f"ledger backends: {ran}; postgresql server {server}"
