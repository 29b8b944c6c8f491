"""romevc: version control for fact edits of GPT-style language models.

The public API is importable from here; torch-heavy pieces load on first use, so
``import romevc`` stays cheap for tools that only read a ledger.
"""
from romevc.editing.request import EditRequest
from romevc.errors import RomevcError

__version__ = "0.1.0"

_LAZY = {
    "EditResult": "romevc.editing.result",
    "RomeHyperParams": "romevc.editing.hparams",
    "Editor": "romevc.editor",
    "load_base": "romevc.model",
    "Repo": "romevc.repo",
}
__all__ = ["EditRequest", "RomevcError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'romevc' has no attribute {name!r}")
