"""The ledger schema is made by migrations only, and they agree with the ORM models.

``compare_metadata`` checks tables, columns, types, nullability, indexes, unique and
foreign keys; the names of every constraint (check constraints included, which Alembic
does not compare) are checked separately, because batch migrations on SQLite find
constraints by name.

Each test runs on a SQLite file and, when ROMEVC_TEST_POSTGRES_URL is set, on a fresh
PostgreSQL database (``tests/ledger_backends.py``).
"""
from __future__ import annotations

import logging

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import main as alembic_main
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from romevc.ledger import (
    LAYOUT_LINEAR, Ledger, LedgerExistsError, LedgerVersionError, NotARepositoryError, RepoInfo, default_url,
)
from romevc.ledger import schema
from romevc.ledger.engine import make_engine, sqlite_foreign_keys_off
from romevc.ledger.models import SqlBase
from tests import ledger_backends as backends

INFO = RepoInfo(base_id="gpt2", architecture="gpt2", dtype="float32", base_fingerprint="ab" * 32,
                module_template="transformer.h.{}.mlp.c_proj", layout=LAYOUT_LINEAR, created=1)


@pytest.fixture(params=backends.backend_params(backends.SHARED_BACKENDS))
def url(request, tmp_path):
    """Where no ledger exists yet: a SQLite file (its folder made), or a fresh PostgreSQL database."""
    with backends.ledger_url(request.param, tmp_path) as url:
        (tmp_path / ".romevc").mkdir()  # engines here bypass Ledger.create, which would make it
        yield url


@pytest.fixture
def engine(url):
    engine = make_engine(url)
    yield engine
    engine.dispose()


def _migrate(engine, step, target: str) -> None:
    with engine.connect() as conn, sqlite_foreign_keys_off(conn):
        with conn.begin():
            step(conn, target)


def _constraint_names(insp, table: str) -> set[str]:
    names = {insp.get_pk_constraint(table)["name"]}
    names |= {fk["name"] for fk in insp.get_foreign_keys(table)}
    names |= {uq["name"] for uq in insp.get_unique_constraints(table)}
    names |= {ck["name"] for ck in insp.get_check_constraints(table)}
    names |= {ix["name"] for ix in insp.get_indexes(table)}
    return names


def test_upgrade_to_head_matches_the_models(engine):
    _migrate(engine, schema.upgrade, "head")
    with engine.connect() as conn:
        assert schema.current_revision(conn) == schema.head_revision()
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SqlBase.metadata)
        assert diffs == []
        insp = inspect(conn)
        assert set(insp.get_table_names()) == set(SqlBase.metadata.tables) | {"alembic_version"}
        for table in SqlBase.metadata.sorted_tables:
            declared = {c.name for c in table.constraints} | {i.name for i in table.indexes}
            assert _constraint_names(insp, table.name) == declared, table.name


def test_downgrade_to_base_and_up_again(engine):
    _migrate(engine, schema.upgrade, "head")
    _migrate(engine, schema.downgrade, "base")
    with engine.connect() as conn:
        assert inspect(conn).get_table_names() == ["alembic_version"]
        assert schema.current_revision(conn) is None
    _migrate(engine, schema.upgrade, "head")
    with engine.connect() as conn:
        assert schema.current_revision(conn) == schema.head_revision()


def test_the_alembic_command_line_uses_the_same_scripts(url, engine):
    alembic_main(["-c", str(schema.MIGRATIONS_DIR / "alembic.ini"), "-x", f"url={url}", "upgrade", "head"])
    with engine.connect() as conn:
        assert schema.current_revision(conn) == schema.head_revision()
    alembic_main(["-c", str(schema.MIGRATIONS_DIR / "alembic.ini"), "-x", f"url={url}", "downgrade", "base"])
    with engine.connect() as conn:
        assert inspect(conn).get_table_names() == ["alembic_version"]


def test_a_newer_schema_is_refused(url):
    Ledger.create(url, INFO).close()
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    with pytest.raises(LedgerVersionError, match=r"newer romevc \(schema 9999_from_the_future\); upgrade romevc"):
        Ledger(url)


def test_a_newer_object_format_is_refused(url):
    Ledger.create(url, INFO).close()
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE repo SET format_version = format_version + 1"))
    engine.dispose()
    with pytest.raises(LedgerVersionError, match="object format"):
        Ledger(url)


def test_an_older_schema_is_upgraded_on_open(url, monkeypatch, caplog):
    """With one revision there is no older schema yet: pretend head has moved on."""
    Ledger.create(url, INFO).close()
    current = schema.head_revision()
    ran: list[str] = []
    monkeypatch.setattr(schema, "head_revision", lambda: "0002_next")
    monkeypatch.setattr(schema, "known_revisions", lambda: frozenset({current, "0002_next"}))
    monkeypatch.setattr(schema, "upgrade", lambda conn, target="head": ran.append(schema.current_revision(conn)))
    with caplog.at_level(logging.INFO, logger="romevc.ledger.schema"):
        Ledger(url).close()
    assert ran == [current]
    assert f"from schema {current} to 0002_next" in caplog.text


def test_what_is_not_a_ledger(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(NotARepositoryError):
        Ledger(f"sqlite:///{empty}")
    with pytest.raises(NotARepositoryError):
        Ledger("sqlite://")
    with pytest.raises(NotARepositoryError, match="romevc init"):
        Ledger(f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()
    url = default_url(tmp_path)
    Ledger.create(url, INFO).close()
    with pytest.raises(LedgerExistsError):
        Ledger.create(url, INFO)


@pytest.mark.skipif(backends.POSTGRES_URL is None, reason=backends.POSTGRES_SKIP)
def test_what_is_not_a_postgresql_ledger():
    with backends.fresh_postgres_database() as url:
        with pytest.raises(NotARepositoryError, match="romevc init"):
            Ledger(url)
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE repo (id integer)"))  # someone else's table of that name
        engine.dispose()
        with pytest.raises(LedgerExistsError):
            Ledger.create(url, INFO)


def test_a_failed_create_rolls_the_schema_back(url):
    """DDL is transactional on both backends: a create that fails half way leaves no tables behind."""
    broken = RepoInfo(**{**INFO.__dict__, "base_id": None})  # NOT NULL violation after the migrations ran
    with pytest.raises(Exception, match="NOT NULL|not-null"):
        Ledger.create(url, broken)
    engine = make_engine(url)
    assert inspect(engine).get_table_names() == []
    engine.dispose()
    Ledger.create(url, INFO).close()
    with Ledger(url) as ledger:
        assert ledger.repo_info() == INFO


def test_migrations_do_not_import_the_models():
    for script in (schema.MIGRATIONS_DIR / "versions").glob("*.py"):
        source = script.read_text()
        assert "romevc" not in source.replace("romevc/ledger/models.py", ""), script.name
        assert "def downgrade() -> None:\n    pass" not in source, f"{script.name} needs a real downgrade()"
