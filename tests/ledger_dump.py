"""A repository's SQLite ledger as plain rows: equal dumps, equal ledgers ("the ledger is unchanged")."""
from __future__ import annotations

import sqlite3
from pathlib import Path


def dump(root: Path) -> dict[str, list]:
    """Every row of every table of the ledger under ``root/.romevc``, sorted, read-only."""
    con = sqlite3.connect(f"file:{root / '.romevc' / 'ledger.db'}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: sorted(con.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
    finally:
        con.close()
