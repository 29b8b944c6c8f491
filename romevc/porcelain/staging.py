"""``romevc init`` all or nothing: the new ``.romevc`` is built under a hidden name and renamed in.

Creating a repository writes two things, the ledger and then ``config.json``, and a
folder counts as a repository only once the config is there. Built in place, an init
killed between the two left a ``.romevc`` holding a ledger but no config: no command
would open it, and ``init`` refused to create a ledger over it. Built in a hidden folder
beside it and moved in with one rename, a killed init leaves only that hidden folder,
and running ``init`` again simply works.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from romevc.porcelain.config import CONFIG_FILE, DOT_DIR
from romevc.porcelain.errors import RepositoryExistsError

LEDGER_FILE = "ledger.db"  # what an interrupted init of an older romevc left in .romevc


@contextlib.contextmanager
def new_repository_folder(root: Path) -> Iterator[Path]:
    """Yield the folder to create ``.romevc`` in; on success it becomes ``root/.romevc``.

    Close the ledger inside the block: it moves with the folder. An existing ``.romevc``
    without a config (made by hand) is built in place, as before.
    """
    dot = root / DOT_DIR
    if dot.exists():
        if (dot / LEDGER_FILE).exists() and not (dot / CONFIG_FILE).exists():
            raise RepositoryExistsError(
                f"{dot} holds a ledger but no {CONFIG_FILE}, as an interrupted `romevc init` leaves it; "
                f"move {dot} away (it may hold commits) and run init again"
            )
        yield root
        return
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=root, prefix=".romevc-init-", suffix=".tmp"))
    try:
        yield stage
        os.replace(stage / DOT_DIR, dot)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
