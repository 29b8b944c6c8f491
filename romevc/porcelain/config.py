"""A repository folder: ``.romevc/config.json``, finding it from a subfolder, and the clock.

The config is the only file besides the ledger: JSON, written to a temporary name and
renamed. It says where the ledger lives (an SQLAlchemy URL, default
``.romevc/ledger.db``) and how second-moment statistics are gathered.
"""
from __future__ import annotations

import json
import time as _time
from dataclasses import asdict, dataclass
from pathlib import Path

from romevc import paths
from romevc.ledger.errors import NotARepositoryError
from romevc.porcelain.errors import RepoError

DOT_DIR, CONFIG_FILE = ".romevc", "config.json"
CONFIG_FORMAT = 1


@dataclass(frozen=True)
class RepoConfig:
    """``.romevc/config.json``: where the ledger is and how statistics are gathered."""

    ledger: str | None = None  # an SQLAlchemy URL; None: .romevc/ledger.db
    author: str | None = None  # default author of commits
    stats_corpus: str | None = None  # None: romevc's default corpus
    stats_tokens: int | None = None  # None: the engine's default
    stats_root: str | None = None  # None: the user cache
    format: int = CONFIG_FORMAT

    @classmethod
    def read(cls, path: Path) -> "RepoConfig":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NotARepositoryError(f"cannot read {path}: {exc}; restore it or run `romevc init` again") from None
        if not isinstance(data, dict) or data.get("format", 0) > CONFIG_FORMAT:
            raise RepoError(f"{path} was written by a newer romevc; upgrade romevc")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def write(self, path: Path) -> None:
        paths.atomic_write_text(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


def find_root(path: str | Path = ".") -> Path:
    """The nearest folder at or above ``path`` holding ``.romevc/config.json``, like git."""
    start = Path(path).expanduser().resolve()
    for folder in (start, *start.parents):
        if (folder / DOT_DIR / CONFIG_FILE).is_file():
            return folder
    raise NotARepositoryError(f"not a romevc repository (or any parent up to /): {start}; run `romevc init` first")


def clock(time: int | None, tz: int | None) -> tuple[int, int]:
    """(UTC seconds, offset east of UTC): now in local time, or the given time (tz 0 unless given).

    A fixed time without a zone gets offset 0, so tests that fix ``time`` get the same ids
    on every machine.
    """
    if time is None:
        now = _time.time()
        return int(now), int(tz if tz is not None else _time.localtime(now).tm_gmtoff)
    return int(time), int(tz or 0)
