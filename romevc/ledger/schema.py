"""The ledger schema's version: Alembic, configured in code, on the top-level ``migrations/``.

The ledger is only ever changed by a migration. Opening a ledger compares its Alembic
revision with the newest one this romevc ships:

- equal: nothing to do;
- an older revision we know: upgrade it, in one transaction, logged at INFO;
- a revision we do not know: it was written by a newer romevc, so refuse
  (:class:`LedgerVersionError`) rather than misread it.

The scripts live in ``migrations/`` at the repository root, found relative to the
``romevc`` package; this works for a source checkout and an editable install
(``pip install -e .``), which is how romevc is installed for development and CI.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

import romevc
from romevc.ledger.engine import WRITE_OPTION, sqlite_foreign_keys_off
from romevc.ledger.errors import LedgerError, LedgerVersionError, NotARepositoryError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(romevc.__file__).resolve().parent.parent / "migrations"


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic config for ``migrations/``; ``env.py`` uses ``connection`` when given."""
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise LedgerError(
            f"romevc's migrations folder is missing (looked in {MIGRATIONS_DIR}); "
            "install romevc from a source checkout with `pip install -e .`"
        )
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest schema revision this romevc knows."""
    head = _script().get_current_head()
    assert head is not None, "migrations/versions is empty"
    return head


def known_revisions() -> frozenset[str]:
    return frozenset(rev.revision for rev in _script().walk_revisions())


def current_revision(connection: Connection) -> str | None:
    """The revision stamped in ``alembic_version``, None for a database Alembic never touched."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection, target: str = "head") -> None:
    """Run the migrations up to ``target`` on ``connection`` (inside its open transaction)."""
    command.upgrade(alembic_config(connection), target)


def downgrade(connection: Connection, target: str) -> None:
    command.downgrade(alembic_config(connection), target)


def _check(revision: str | None, where: str) -> bool:
    """True when an upgrade is needed; raise when the ledger cannot be used at all."""
    if revision is None:
        raise NotARepositoryError(f"{where} holds no romevc ledger; create one with `romevc init`")
    if revision == head_revision():
        return False
    if revision not in known_revisions():
        raise LedgerVersionError(
            f"this ledger was written by a newer romevc (schema {revision}); upgrade romevc"
        )
    return True


def ensure_current(engine: Engine, where: str) -> None:
    """Check the schema of an existing ledger and upgrade it if it is older than this code.

    The check reads without locking; only when an upgrade is due does it take the write
    lock and check again, so two processes opening an old ledger upgrade it once.
    """
    with engine.connect() as conn:
        with conn.begin():
            if not _check(current_revision(conn), where):
                return
    with engine.connect() as conn, sqlite_foreign_keys_off(conn):
        conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            revision = current_revision(conn)
            if _check(revision, where):
                log.info("upgrading the ledger at %s from schema %s to %s", where, revision, head_revision())
                upgrade(conn)
