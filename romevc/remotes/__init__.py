"""Publishing and fetching edit sets: the Hugging Face Hub, git remotes, PEFT and full exports.

- :mod:`~romevc.remotes.editset`: the published format (``romevc.json``, ``edits.safetensors``,
  ``README.md``), version 1, and its safety checks on the way in;
- :mod:`~romevc.remotes.protocol`: the one ``Remote`` protocol; :mod:`~romevc.remotes.hub`
  and :mod:`~romevc.remotes.git` implement it (``MemoryRemote`` too, in memory);
- :mod:`~romevc.remotes.sync`: push, fetch, pull, clone over a :class:`romevc.repo.Repo`;
- :mod:`~romevc.remotes.exports`: ``export --format full|peft|romevc``.

huggingface_hub, gitpython and peft are imported only when a function needs them.
"""
from __future__ import annotations

_LAZY = {
    "EditSet": "romevc.remotes.editset",
    "read_editset": "romevc.remotes.editset",
    "write_editset": "romevc.remotes.editset",
    "Remote": "romevc.remotes.protocol",
    "MemoryRemote": "romevc.remotes.protocol",
    "open_remote": "romevc.remotes.protocol",
    "push": "romevc.remotes.sync",
    "fetch": "romevc.remotes.sync",
    "pull": "romevc.remotes.sync",
    "clone": "romevc.remotes.sync",
    "add_remote": "romevc.remotes.sync",
    "remove_remote": "romevc.remotes.sync",
    "export": "romevc.remotes.exports",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'romevc.remotes' has no attribute {name!r}")
