"""Write a commit's weights as an ordinary transformers checkpoint.

The folder is built under a temporary name beside the target and renamed into place, so
an interrupted export leaves nothing that looks finished. It holds safetensors weights,
the config and tokenizer, and ``romevc-export.json`` naming the base, commit and edits:
``AutoModelForCausalLM.from_pretrained(DIR)`` loads it without romevc.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from romevc import paths
from romevc.porcelain.errors import ExportError

EXPORT_MANIFEST = "romevc-export.json"


def check_target(out: str | Path, *, force: bool = False) -> Path:
    """``out`` resolved, if an export may write there (checked before any model is loaded)."""
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(f"{out} exists and is not an empty folder; pick another --out or pass --force")
    return out


def export_checkpoint(model: torch.nn.Module, tokenizer, out: str | Path, manifest: dict[str, Any],
                      *, force: bool = False) -> Path:
    """Save ``model`` (its current weights) and ``tokenizer`` to ``out``; returns the folder."""
    out = check_target(out, force=force)
    try:
        with paths.staging_dir(out) as staging:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            (staging / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc}") from None
    return out
