"""Engines for any SQLAlchemy URL, set up so several processes can share one ledger.

SQLite is the default ledger, and two ``romevc`` commands may well run at the same time
(a long ``edit`` and a ``log``). What makes that safe:

- WAL journal: readers never block the writer and the writer never blocks readers.
- ``busy_timeout``: a writer waits up to :data:`BUSY_TIMEOUT_S` for another writer's lock.
- Write transactions start with ``BEGIN IMMEDIATE``. A deferred transaction that reads
  first and writes later can fail with "database is locked" *without* waiting, when
  another writer committed in between (SQLite cannot upgrade a stale read snapshot).
  Taking the write lock up front makes the busy timeout apply. pysqlite's own implicit
  transaction handling is turned off so that romevc, not the driver, emits ``BEGIN``;
  this also makes DDL transactional, so a failed migration rolls back whole.
- ``foreign_keys=ON`` on every connection (SQLite defaults to off).

An in-memory URL (``sqlite://``) gets a :class:`StaticPool`: every session shares its one
connection, so every session sees the same database. Such a ledger is for tests and
scratch work in one thread; concurrent threads would interleave on that one connection.

PostgreSQL (``postgresql://…``, a team's shared ledger) gets the same guarantee as SQLite's
``BEGIN IMMEDIATE``, with the same timeout:

- A write transaction first takes a transaction-level advisory lock,
  ``pg_advisory_xact_lock(WRITE_LOCK_KEY)``, so writers run one at a time (readers never
  wait: MVCC). Each later statement sees everything the previous writer committed (READ
  COMMITTED), so "look up, then insert" and "read, modify, write" cannot race into a
  duplicate key or a lost update, and writers never deadlock each other.
- ``lock_timeout`` bounds that wait at :data:`BUSY_TIMEOUT_S`; a timeout, a serialization
  failure or a deadlock is transient (:func:`is_locked_error`), and the single-call ledger
  methods retry it.
- ``postgresql://`` without a driver means psycopg 3 (``pip install "psycopg[binary]"``).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import NoSuchModuleError, OperationalError
from sqlalchemy.pool import StaticPool

from romevc.ledger.errors import LedgerError, LedgerUnavailableError

BUSY_TIMEOUT_S = 30.0
WRITE_OPTION = "romevc_write"  # execution option: BEGIN IMMEDIATE on SQLite, the write lock on PostgreSQL
# Key of PostgreSQL's advisory write lock, one per database: "romevc" in ASCII.
WRITE_LOCK_KEY = int.from_bytes(b"romevc", "big")
# SQLSTATEs worth retrying the whole transaction for: serialization_failure, deadlock_detected,
# lock_not_available (the lock_timeout above).
_PG_TRANSIENT = frozenset({"40001", "40P01", "55P03"})


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def normalise_url(url: str | URL) -> URL:
    """``url`` as a :class:`URL`; ``postgresql://`` without a driver gets psycopg 3."""
    url = make_url(url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url


def sqlite_memory(url: str | URL) -> bool:
    """Whether ``url`` names a private in-memory SQLite database."""
    u = make_url(url)
    return is_sqlite(u) and (u.database in (None, "", ":memory:") or u.query.get("mode") == "memory")


def sqlite_path(url: str | URL) -> Path | None:
    """The file of a SQLite URL; None for other backends and in-memory databases."""
    u = make_url(url)
    if not is_sqlite(u) or sqlite_memory(u) or str(u.database).startswith("file:"):
        return None
    return Path(str(u.database))


def _on_connect(dbapi_connection: Any, _record: Any, *, memory: bool) -> None:
    dbapi_connection.isolation_level = None  # romevc emits BEGIN itself, see _on_begin
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable in WAL mode up to a power cut
    finally:
        cursor.close()


def _on_begin(connection: Connection) -> None:
    immediate = connection.get_execution_options().get(WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _on_begin_postgresql(connection: Connection) -> None:
    if connection.get_execution_options().get(WRITE_OPTION, False):
        connection.exec_driver_sql(f"SET LOCAL lock_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")


def make_engine(url: str | URL) -> Engine:
    """An engine for ``url``, set up as the module docstring describes for SQLite and PostgreSQL."""
    url = normalise_url(url)
    if not is_sqlite(url):
        try:
            engine = create_engine(url, pool_pre_ping=True)
        except (ImportError, NoSuchModuleError) as exc:
            raise LedgerError(
                f"cannot open a {url.get_backend_name()} ledger: its driver is missing ({exc}); "
                'for PostgreSQL run `pip install "psycopg[binary]"`'
            ) from None
        if url.get_backend_name() == "postgresql":
            event.listen(engine, "begin", _on_begin_postgresql)
        return engine
    memory = sqlite_memory(url)
    kwargs: dict[str, Any] = {"connect_args": {"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}}
    if memory:
        kwargs["poolclass"] = StaticPool
    engine = create_engine(url, **kwargs)
    event.listen(engine, "connect", lambda conn, rec: _on_connect(conn, rec, memory=memory))
    event.listen(engine, "begin", _on_begin)
    return engine


def check_reachable(engine: Engine, where: str) -> None:
    """Connect once, so an unreachable database is one clear :class:`LedgerUnavailableError`."""
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
        raise LedgerUnavailableError(
            f"cannot connect to the ledger at {where}: {reason}; check the URL, that the server is up and "
            "your credentials (a password can live in ~/.pgpass or $PGPASSWORD instead of the URL)"
        ) from None


def is_locked_error(exc: BaseException) -> bool:
    """Whether ``exc`` is transient, worth retrying the transaction: SQLite's "database is
    locked"/"busy", or PostgreSQL's lock timeout, serialization failure or deadlock."""
    if not isinstance(exc, OperationalError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)  # psycopg 3, psycopg2
    if sqlstate is not None:
        return sqlstate in _PG_TRANSIENT
    text = str(exc.orig).lower()
    return "database is locked" in text or "database is busy" in text or "database table is locked" in text


@contextlib.contextmanager
def sqlite_foreign_keys_off(connection: Connection) -> Iterator[None]:
    """Turn SQLite's foreign keys off on ``connection`` for a batch migration, then back on.

    Batch mode copies a table, drops the original and renames the copy; with foreign keys
    on, dropping a referenced table could cascade. The pragma only works outside a
    transaction, so it goes straight to the driver before anything begins.
    """
    if connection.dialect.name != "sqlite" or connection.in_transaction():
        yield
        return
    raw = connection.connection.driver_connection
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        if connection.in_transaction():
            connection.rollback()  # never leave a half migration open on a pooled connection
        raw.execute("PRAGMA foreign_keys=ON")
