"""Where romevc keeps caches, and how it writes files without leaving half of one.

Every file beside the ledger is written under a temporary name and renamed into place,
so a crash leaves either the old file, the new file, or a temporary that nobody trusts.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def cache_dir() -> Path:
    """``$ROMEVC_CACHE``, else ``$XDG_CACHE_HOME/romevc``, else ``~/.cache/romevc``."""
    if os.environ.get("ROMEVC_CACHE"):
        return Path(os.environ["ROMEVC_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "romevc"


def models_dir() -> Path:
    """Converted models (the demo model): ``$ROMEVC_MODELS``, else ``<cache>/models``."""
    if os.environ.get("ROMEVC_MODELS"):
        return Path(os.environ["ROMEVC_MODELS"]).expanduser()
    return cache_dir() / "models"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """Yield an empty sibling folder; on success it replaces ``target`` in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield staging
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
