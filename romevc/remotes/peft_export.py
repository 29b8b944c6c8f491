"""A commit's edits as a PEFT LoRA adapter that ``PeftModel.from_pretrained`` loads without romevc.

An edit is ΔW = vᵀu in (out, in): v is (k, d_out), u is (k, d_in). LoRA adds
``lora_B @ lora_A * (lora_alpha / r)`` with lora_B (out, r) and lora_A (r, in). So, per
module, stacking the k_i rows of all its edits in edit-set order:

    lora_A = [u_1; u_2; …]      (K, d_in)    K = Σ k_i
    lora_B = [v_1; v_2; …]ᵀ     (d_out, K)
    r = lora_alpha = K          (scaling 1)

and Σ_i v_iᵀu_i = lora_B @ lora_A exactly (up to float32 rounding of the sum). A module
whose K differs from the most common one gets ``rank_pattern``/``alpha_pattern`` entries.
GPT-2's Conv1D stores its weight (in, out), which peft needs told: ``fan_in_fan_out=True``
(from the layout recorded with every edit, never guessed from shapes). The adapter's
tensors are named as peft saves them: ``base_model.model.<module>.lora_{A,B}.weight``.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from romevc import paths
from romevc.ledger import LAYOUT_CONV1D, EditRecord
from romevc.porcelain.errors import NothingToDoError

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


def lora_weights(records: Sequence[EditRecord]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The adapter's tensors (peft's key names) and each module's rank K."""
    rows: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for r in records:
        us, vs = rows.setdefault(r.module, ([], []))
        us.append(np.frombuffer(r.u, dtype="<f4").reshape(r.rank, r.d_in))  # (k, d_in)
        vs.append(np.frombuffer(r.v, dtype="<f4").reshape(r.rank, r.d_out))  # (k, d_out)
    tensors, ranks = {}, {}
    for module, (us, vs) in rows.items():
        a = np.ascontiguousarray(np.concatenate(us, axis=0), dtype=np.float32)  # (K, d_in)
        b = np.ascontiguousarray(np.concatenate(vs, axis=0).T, dtype=np.float32)  # (d_out, K)
        tensors[f"base_model.model.{module}.lora_A.weight"] = a
        tensors[f"base_model.model.{module}.lora_B.weight"] = b
        ranks[module] = a.shape[0]
    return tensors, ranks


def lora_config(records: Sequence[EditRecord], ranks: dict[str, int], *, base_id: str, revision: str | None):
    """A ``peft.LoraConfig`` with scaling 1 on every module (lora_alpha = r per module)."""
    from peft import LoraConfig

    layouts = {r.layout for r in records}
    if len(layouts) != 1:
        raise ValueError(f"edits of one repository share a layout, got {sorted(layouts)}")
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {m: k for m, k in sorted(ranks.items()) if k != r}
    return LoraConfig(
        r=r, lora_alpha=r, rank_pattern=pattern, alpha_pattern=dict(pattern), target_modules=sorted(ranks),
        fan_in_fan_out=layouts.pop() == LAYOUT_CONV1D, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        base_model_name_or_path=base_id, revision=revision, inference_mode=True,
    )


def _sort_target_modules(path: Path) -> None:
    """peft keeps ``target_modules`` as a set, so it writes them in hash order: sort them, so the
    same commit always exports the same bytes."""
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    paths.atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def export_peft(repo, ref: str, out: str | Path, *, force: bool = False) -> Path:
    """Write ``ref``'s edit set as a LoRA adapter folder (config, safetensors, model card)."""
    from safetensors.numpy import save

    from romevc.porcelain.export import check_target
    from romevc.remotes.card import adapter_card
    from romevc.remotes.editset import BaseRef

    out = check_target(out, force=force)
    commit = repo.ledger.resolve(ref)
    records = repo.records(commit)
    if not records:
        raise NothingToDoError(f"{ref} has no edits: a LoRA adapter needs at least one")
    info = repo.info
    tensors, ranks = lora_weights(records)
    config = lora_config(records, ranks, base_id=info.base_id, revision=info.revision)
    with paths.staging_dir(out) as staging:
        config.save_pretrained(str(staging))
        _sort_target_modules(staging / CONFIG_FILE)
        paths.atomic_write_bytes(staging / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
        paths.atomic_write_text(staging / "README.md", adapter_card(BaseRef.of(info), records, commit))
    return out
