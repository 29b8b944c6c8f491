"""A repository folder: creating it, ``.romevc/config.json``, finding it from a subfolder, the clock.

The config is the only file besides the ledger: JSON, written to a temporary name and
renamed. It says where the ledger lives (an SQLAlchemy URL, default
``.romevc/ledger.db``) and how second-moment statistics are gathered.

A folder that joins an existing shared ledger gets a random worktree id, kept in its config,
and its own HEAD row ``worktrees/<id>/HEAD`` in the ledger, so one teammate's checkout never
moves another's HEAD (git's per-worktree HEAD). The folder that created the ledger has no
worktree id and uses the row ``HEAD``.
"""
from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import time as _time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from romevc import paths
from romevc.ledger import Ledger, LedgerExistsError, RepoInfo, default_url
from romevc.ledger.errors import NotARepositoryError, RefFormatError
from romevc.ledger.refs import HEAD, worktree_head
from romevc.porcelain.errors import BaseMismatchError, RepoError

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
    worktree: str | None = None  # None: this folder created the ledger and uses its HEAD row
    format: int = CONFIG_FORMAT

    @property
    def head_name(self) -> str:
        """The ledger row holding this folder's HEAD: ``HEAD``, or ``worktrees/<id>/HEAD`` once joined."""
        return HEAD if self.worktree is None else worktree_head(self.worktree)

    @classmethod
    def read(cls, path: Path) -> "RepoConfig":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NotARepositoryError(f"cannot read {path}: {exc}; restore it or run `romevc init` again") from None
        if not isinstance(data, dict) or data.get("format", 0) > CONFIG_FORMAT:
            raise RepoError(f"{path} was written by a newer romevc; upgrade romevc")
        config = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        try:
            config.head_name
        except RefFormatError as exc:
            raise RepoError(f"{path}: {exc}") from None
        return config

    def write(self, path: Path) -> None:
        paths.atomic_write_text(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


def find_root(path: str | Path = ".") -> Path:
    """The nearest folder at or above ``path`` holding ``.romevc/config.json``, like git."""
    try:
        start = Path(path).expanduser().resolve()
        for folder in (start, *start.parents):
            if (folder / DOT_DIR / CONFIG_FILE).is_file():
                return folder
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a name too long, ~nosuchuser
        raise NotARepositoryError(f"cannot look for a romevc repository at {str(path)!r}: {exc}") from None
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


def repo_info(loaded, *, created: int) -> RepoInfo:
    """The ledger's repo row for a loaded base: id (a local folder made absolute, so the
    repository works from any folder), pinned revision, family, dtype, fingerprint, module."""
    from romevc.model import DEMO_ALIASES

    base_id = loaded.spec.id
    if base_id.lower() not in DEMO_ALIASES and Path(base_id).expanduser().exists():
        base_id = str(Path(base_id).expanduser().resolve())
    arch = loaded.architecture
    return RepoInfo(base_id=base_id, architecture=arch.family, dtype=str(loaded.dtype).removeprefix("torch."),
                    base_fingerprint=loaded.fingerprint, module_template=arch.module_template(), layout=arch.layout,
                    revision=loaded.revision or loaded.spec.revision, created=created)


def create(root: Path, info: RepoInfo, config: RepoConfig, initial_branch: str = "main") -> tuple[Ledger, RepoConfig]:
    """Make ``root/.romevc``: the ledger (or join the shared one at ``config.ledger``) and the config.

    Paths in the config are made absolute. On any failure a ``.romevc`` made here is removed.
    """
    def absolute(p: str | None) -> str | None:
        return str(Path(p).expanduser().resolve()) if p and Path(p).expanduser().exists() else p

    config = replace(config, stats_corpus=absolute(config.stats_corpus),
                     stats_root=str(Path(config.stats_root).expanduser().resolve()) if config.stats_root else None)
    dot = root / DOT_DIR
    made_dot = not dot.exists()
    dot.mkdir(parents=True, exist_ok=True)
    try:
        try:
            ledger = Ledger.create(config.ledger or default_url(root), info, initial_branch=initial_branch)
        except LedgerExistsError:
            if config.ledger is None:
                raise
            # Joining a shared ledger: a HEAD of this folder's own, starting where the main HEAD is.
            config = replace(config, worktree=secrets.token_hex(8))
            ledger = Ledger(config.ledger, head_name=config.head_name)
            try:
                if ledger.repo_info().base_fingerprint != info.base_fingerprint:
                    raise BaseMismatchError(f"the ledger at {config.ledger} belongs to another base; "
                                            "pass the same --base")
                ledger.add_head()
            except BaseException:
                ledger.close()
                raise
        try:
            config.write(dot / CONFIG_FILE)
        except BaseException:
            if config.worktree is not None:
                with contextlib.suppress(Exception):  # the write's error is the one to report
                    ledger.remove_head()
            ledger.close()
            raise
    except BaseException:
        if made_dot:
            shutil.rmtree(dot, ignore_errors=True)
        raise
    return ledger, config
