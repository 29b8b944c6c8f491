"""Alembic environment of the romevc ledger.

Two ways in:

- romevc itself (``romevc/ledger/schema.py``) hands over an open connection in
  ``config.attributes["connection"]``, already inside a transaction it owns, so the
  schema check, the upgrade and anything after it commit or roll back together;
- by hand: ``alembic -c migrations/alembic.ini -x url=<sqlalchemy url> upgrade head``
  (or ``$ROMEVC_LEDGER_URL``), which builds romevc's own engine (WAL, busy timeout,
  explicit BEGIN on SQLite) and runs every migration in one transaction.

``render_as_batch=True``: SQLite cannot ALTER most columns, so migrations use
``op.batch_alter_table``, which copies the table; SQLite's foreign keys are off meanwhile.
"""
from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from romevc.ledger.engine import make_engine, sqlite_foreign_keys_off
from romevc.ledger.models import SqlBase  # for autogenerate and `alembic check` only

config = context.config
target_metadata = SqlBase.metadata


def _url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("ROMEVC_LEDGER_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise SystemExit("no ledger URL: pass -x url=sqlite:///path/.romevc/ledger.db or set ROMEVC_LEDGER_URL")
    return url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        # romevc's SQLite engine emits BEGIN itself, which makes SQLite's DDL transactional.
        transactional_ddl=True if connection.dialect.name == "sqlite" else None,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as conn, sqlite_foreign_keys_off(conn):
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
