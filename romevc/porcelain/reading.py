"""The reading verbs of :class:`romevc.repo.Repo`: status, show, diff, and greedy generation.

Only ``show`` and ``diff --probe`` load the model; everything else reads the ledger.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from romevc.ledger import EditRecord
from romevc.porcelain import batch
from romevc.porcelain.reports import DiffReport, EditEffect, EditSummary, ProbeResult, ShowReport, Status, collapse

if TYPE_CHECKING:
    from romevc.repo import Repo

_FEW = 256  # changed edits fetched one by one; more, and the whole set is read in one query


def summaries(records: Sequence[EditRecord], stale: Sequence[bool] | None = None) -> tuple[EditSummary, ...]:
    return tuple(EditSummary.of(r, None if stale is None else s) for r, s in zip(records, stale or [None] * len(records)))


def edits_by_id(repo: "Repo", commit: str, ids: Sequence[str]) -> list[EditRecord]:
    """The records of ``ids`` (all in ``commit``'s set), in the given order, read cheaply."""
    if len(ids) <= _FEW:
        return [repo.ledger.get_edit(i) for i in ids]
    pool = {e.id: e for e in repo.records(commit)}
    return [pool[i] for i in ids]


def status(repo: "Repo") -> Status:
    head = repo.ledger.head()
    records = repo.records(head.commit)
    stale = [r for r, s in zip(records, repo.stale(records)) if s]
    i = repo.info
    return Status(head.branch, head.commit, len(records), collapse(stale, [True] * len(stale)),
                  i.base_id, i.revision, i.base_fingerprint, i.architecture, i.dtype,
                  repo.ledger.url.render_as_string(hide_password=True))

def show(repo: "Repo", ref: str = "HEAD", *, predictions: bool = True) -> ShowReport:
    """What a commit changed against its first parent, with predictions on each changed prompt."""
    commit = repo.ledger.get_commit(repo.ledger.resolve(ref))
    before = repo.records(commit.parents[0]) if commit.parents else []
    after = repo.records(commit.id)
    before_ids, after_ids = {e.id for e in before}, {e.id for e in after}
    stale = dict(zip((e.id for e in after), repo.stale(after)))
    added = [e for e in after if e.id not in before_ids]
    removed = [e for e in before if e.id not in after_ids]
    effects: list[EditEffect] = []
    # A MEMIT request's pieces (one per layer) are one fact here: listed and predicted once.
    added_facts = collapse(added, [stale[e.id] for e in added])
    removed_facts = collapse(removed)
    changed = [(e, "added") for e in added_facts] + [(e, "removed") for e in removed_facts]
    if predictions and changed:
        prompts = [e.text for e, _ in changed]
        targets = [e.target_new for e, _ in changed]
        was = repo.predictions(prompts, targets, records=before)
        now = repo.predictions(prompts, targets, records=after)
        effects = [EditEffect(e, kind, b, a) for (e, kind), b, a in zip(changed, was, now)]
    return ShowReport(commit, added_facts, removed_facts, tuple(effects))

def diff(repo: "Repo", a: str, b: str = "HEAD", *, probe: str | Path | None = None) -> DiffReport:
    """Edits added and removed from ``a`` to ``b``; with ``probe``, the top prediction of each prompt at both."""
    ca, cb = repo.ledger.resolve(a), repo.ledger.resolve(b)
    ids_a, ids_b = repo.ledger.get_commit(ca).edit_ids, repo.ledger.get_commit(cb).edit_ids
    set_a, set_b = set(ids_a), set(ids_b)
    added = edits_by_id(repo, cb, [e for e in ids_b if e not in set_a])
    removed = edits_by_id(repo, ca, [e for e in ids_a if e not in set_b])
    probes = None
    if probe is not None:
        prompts = batch.read_probes(probe)
        none = [None] * len(prompts)
        was = repo.predictions(prompts, none, ca)
        now = repo.predictions(prompts, none, cb)
        probes = tuple(ProbeResult(p, x, y) for p, x, y in zip(prompts, was, now))
    return DiffReport(ca, cb, collapse(added), collapse(removed), probes)  # a MEMIT request once, with its layers


def generate(loaded, prompt: str, max_new_tokens: int = 30) -> str:
    """Greedy continuation of ``prompt`` by a :class:`romevc.model.LoadedModel` (the new text only)."""
    import torch

    tok = loaded.tokenizer
    batch_ = tok(prompt, return_tensors="pt").to(next(loaded.model.parameters()).device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        out = loaded.model.generate(**batch_, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad)
    # Decode the whole sequence and cut the prompt off, so the completion keeps the space
    # before its first word whatever the tokenizer (word-level ones decode tokens bare).
    prompt_text = tok.decode(batch_["input_ids"][0], skip_special_tokens=True)
    full = tok.decode(out[0], skip_special_tokens=True)
    if full.startswith(prompt_text):
        return full[len(prompt_text):]
    return tok.decode(out[0, batch_["input_ids"].shape[1]:], skip_special_tokens=True)
