"""Model cards for what romevc publishes: an edit set, a PEFT adapter, a full checkpoint.

Written with huggingface_hub's ``ModelCard``/``ModelCardData``, so the Hub shows the base
model, the relation and the tags. ``base_model`` is set only when the base is a Hub id:
a local folder means nothing on the Hub (and the Hub refuses such metadata), so the card's
text names it instead. The body is a table of the facts the edits change.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from romevc.ledger import EditRecord

if TYPE_CHECKING:
    from romevc.remotes.editset import BaseRef, EditSet

TAGS = ["romevc", "model-editing", "rome"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # as romevc.model reads a base


def hub_base_model(base_id: str) -> str | None:
    """``base_id`` if it names a Hub repository (not a local folder or alias), else None."""
    if _HUB_ID.match(base_id) and not Path(base_id).expanduser().exists():
        return base_id
    return None


def _cell(text: object) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def facts_table(edits: Sequence[EditRecord]) -> str:
    """A Markdown table, one row per edit: the prompt, the new and previous target, where it writes."""
    if not edits:
        return "_No edits: this is the base model's behaviour._\n"
    rows = ["| Fact | New target | Previous target | Layer | Method | Edit |", "|---|---|---|---|---|---|"]
    for e in edits:
        r = e.request
        prompt = str(r.get("prompt", "{}")).replace("{}", str(r.get("subject", "")), 1)
        rows.append(f"| {_cell(prompt)} | {_cell(r.get('target_new', ''))} | {_cell(r.get('target_true') or '-')} "
                    f"| {e.layer} | {_cell(e.method)} | `{e.id[:12]}` |")
    return "\n".join(rows) + "\n"


def _base_line(base: "BaseRef") -> str:
    rev = f" at revision `{base.revision}`" if base.revision else ""
    hub = hub_base_model(base.id)
    name = f"[`{base.id}`](https://huggingface.co/{base.id})" if hub else f"`{base.id}` (a local checkpoint)"
    return f"{name}{rev}, weights fingerprint `{base.fingerprint[:16]}`"


def _render(base: "BaseRef", *, relation: str, library: str, body: str, extra_tags: Sequence[str] = ()) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(library_name=library, tags=[*TAGS, *extra_tags])
    hub = hub_base_model(base.id)
    if hub:
        data.base_model = hub
        data.base_model_relation = relation
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def editset_card(editset: "EditSet", url: str | None = None) -> str:
    """The README.md of a published edit set (``url``: where it is published, for the usage lines)."""
    m = editset.manifest
    head = m.head
    facts = editset.edits_of(head) if head else []
    refs = ", ".join([f"branch `{b}`" for b in m.branches] + [f"tag `{t}`" for t in m.tags]) or "a commit"
    body = (
        f"# ROME fact edits of {m.base.id}\n\n"
        f"{len(facts)} fact edit(s) of {_base_line(m.base)}, published with romevc "
        f"(format version {m.format_version}; {refs}; head `{(head or '')[:12]}`).\n\n"
        "The base weights are not here. `romevc.json` holds the commit graph and each edit's request, method, "
        "hyperparameters and seed; `edits.safetensors` holds the rank-one deltas ΔW = vᵀu (`<edit-id>.u`, "
        "`<edit-id>.v`, float32). Every edit and commit is addressed by the sha256 of its content, and romevc "
        "verifies each one when it fetches.\n\n"
        "## Facts changed\n\n" + facts_table(facts) + "\n"
        "## Use\n\n"
        "```bash\n"
        f"romevc clone {url or 'hf://ORG/NAME'} edits   # a repository on the same base, checked out\n"
        "romevc export HEAD --format peft --out adapter  # a LoRA adapter that peft loads without romevc\n"
        "```\n"
    )
    return _render(m.base, relation="adapter", library="romevc", body=body)


def adapter_card(base: "BaseRef", edits: Sequence[EditRecord], commit: str) -> str:
    """The README.md of a PEFT LoRA adapter exported from a commit."""
    body = (
        f"# LoRA adapter: ROME fact edits of {base.id}\n\n"
        f"The {len(edits)} rank-one edit(s) of romevc commit `{commit[:12]}` on {_base_line(base)}, stacked per "
        "module as a LoRA adapter (lora_B = V, lora_A = U, r = lora_alpha = rank, so the scaling is 1).\n\n"
        "## Facts changed\n\n" + facts_table(edits) + "\n"
        "## Use\n\n"
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM\n\n"
        f"base = AutoModelForCausalLM.from_pretrained({base.id!r})\n"
        "model = PeftModel.from_pretrained(base, \"path/to/this/adapter\")\n"
        "```\n"
    )
    return _render(base, relation="adapter", library="peft", body=body, extra_tags=["lora"])


def checkpoint_card(base: "BaseRef", edits: Sequence[EditRecord], commit: str) -> str:
    """The README.md of a full edited checkpoint (``export --format full``, ``push --materialize``)."""
    body = (
        f"# {base.id} with ROME fact edits\n\n"
        f"The full weights of romevc commit `{commit[:12]}`: {_base_line(base)} with {len(edits)} rank-one "
        "edit(s) applied. `AutoModelForCausalLM.from_pretrained` loads it without romevc; "
        "`romevc-export.json` names the base, commit and edits.\n\n"
        "## Facts changed\n\n" + facts_table(edits)
    )
    return _render(base, relation="finetune", library="transformers", body=body)
