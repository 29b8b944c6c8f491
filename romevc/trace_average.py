"""Average indirect effects over many facts (Meng et al. 2022, Figure 2).

The indirect effect of a state is p(answer | corrupted, that state restored) −
p(answer | corrupted). Averaged per layer over facts, with tokens grouped by their role
as in the paper: first, middle and last subject token, the first token after the
subject, further tokens, and the last token (tokens before the subject are left out, as
the paper leaves them out). A token can fill two roles (a one-token subject is both
first and last); it counts in both, as in the paper's code.

Each fact's trace is appended to a JSONL file as soon as it is done, so a long run cut
short keeps what it did and a rerun skips those facts. Every line records the settings
and the model fingerprint; a file made with others is refused rather than mixed in.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from romevc.errors import RomevcError
from romevc.trace import KINDS, TraceError, TraceResult, TraceSettings, trace

log = logging.getLogger(__name__)

TOKEN_KINDS = ("first subject token", "middle subject tokens", "last subject token",
               "first subsequent token", "further tokens", "last token")
LAST_SUBJECT = TOKEN_KINDS.index("last subject token")


def token_kinds(n_tokens: int, subject_range: tuple[int, int]) -> dict[str, list[int]]:
    """Token indices of each role in a prompt of ``n_tokens`` with the subject at [first, end)."""
    first, end = subject_range
    last = n_tokens - 1
    return {
        "first subject token": [first],
        "middle subject tokens": list(range(first + 1, end - 1)),
        "last subject token": [end - 1],
        "first subsequent token": [end] if end < n_tokens else [],
        "further tokens": list(range(end + 1, last)),
        "last token": [last],
    }


def fact_effects(result: TraceResult) -> dict[str, dict[str, torch.Tensor]]:
    """Restoration kind → token role → (layers,) indirect effect, mean over the role's tokens (roles with none left out)."""
    roles = token_kinds(len(result.tokens), result.subject_range)
    return {kind: {role: (result.grids[kind][idx].mean(0) - result.p_corrupt)
                   for role, idx in roles.items() if idx}
            for kind in KINDS}


@dataclass
class AverageTrace:
    """Average indirect effect per restoration kind, as (token role, layer) grids."""

    n_facts: int  # facts averaged
    skipped: int  # facts not averaged: not known (with known_only) or not traceable
    p_clean: float  # mean over the averaged facts
    p_corrupt: float
    counts: dict[str, int]  # facts that have a token in each role
    effects: dict[str, list[list[float | None]]]  # kind → [role][layer]; None: no fact has the role

    def suggest_layer(self) -> tuple[int, float]:
        """The layer whose MLP restoration at the last subject token helps most: where ROME should edit."""
        row = self.effects["mlp"][LAST_SUBJECT]  # every fact has a last subject token
        layer = max(range(len(row)), key=row.__getitem__)
        return layer, row[layer]

    def to_dict(self) -> dict:
        return {**asdict(self), "token_kinds": list(TOKEN_KINDS)}


def average(results: Sequence[TraceResult], skipped: int = 0) -> AverageTrace:
    """Average indirect effects of ``results`` (at least one; all from the same model)."""
    if not results:
        raise TraceError("no fact could be traced, so there is nothing to average")
    depth = results[0].layers
    sums = {kind: torch.zeros(len(TOKEN_KINDS), depth, dtype=torch.float64) for kind in KINDS}
    counts = torch.zeros(len(TOKEN_KINDS), dtype=torch.float64)
    for result in results:
        for kind, roles in fact_effects(result).items():
            for role, effect in roles.items():
                sums[kind][TOKEN_KINDS.index(role)] += effect.double()
        counts += torch.tensor([float(bool(idx)) for idx in
                                token_kinds(len(result.tokens), result.subject_range).values()])
    means = {kind: (total / counts.clamp(min=1)[:, None]).tolist() for kind, total in sums.items()}
    # A role no fact has (no middle subject tokens anywhere) has no average: None, not 0.
    effects = {kind: [row if counts[i] > 0 else [None] * depth for i, row in enumerate(grid)]
               for kind, grid in means.items()}
    return AverageTrace(
        n_facts=len(results), skipped=skipped,
        p_clean=sum(r.p_clean for r in results) / len(results),
        p_corrupt=sum(r.p_corrupt for r in results) / len(results),
        counts={role: int(c) for role, c in zip(TOKEN_KINDS, counts)}, effects=effects,
    )


# -- the per-fact record file -------------------------------------------------------------

def read_records(path: Path, identity: dict) -> dict[int, dict]:
    """case id → its latest record in ``path``; a torn last line (a run killed mid-write) is ignored."""
    records: dict[int, dict] = {}
    if not path.exists():
        return records
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            case_id = int(record["case_id"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s:%d is not a complete record (a run cut short?); it is traced again", path, number)
            continue
        if record.get("identity") != identity:
            raise TraceError(f"{path} holds traces made with other settings or another model "
                             f"({record.get('identity')} ≠ {identity}); choose another --out or delete it")
        records[case_id] = record
    return records


def append_record(path: Path, record: dict) -> None:
    """Append one JSON line and fsync it, starting a fresh line if a torn one is at the end."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        f.flush()
        os.fsync(f.fileno())


def _is_done(record: dict | None, known_only: bool) -> bool:
    if record is None:
        return False
    return "trace" in record or "error" in record or (known_only and record.get("known") is False)


def _trace_case(model, tokenizer, case, settings: TraceSettings, identity: dict, known_only: bool) -> dict:
    """One fact's record: its trace, or why there is none. The answer is the true object's first token."""
    from romevc.editing.rome import target_token_ids
    from romevc.trace import locate_subject

    request = case.request
    record = {"case_id": case.case_id, "identity": identity, "prompt": request.text, "subject": request.subject,
              "target_true": request.target_true}
    try:
        if not request.target_true:
            raise TraceError("the record has no true object to trace")
        if known_only:
            located = locate_subject(tokenizer, request.prompt, request.subject)
            ids = torch.tensor([located.ids], device=next(model.parameters()).device)
            with torch.no_grad():
                top = int(model(input_ids=ids, use_cache=False).logits[0, -1].argmax())
            if top != target_token_ids(tokenizer, located.text, request.target_true)[0]:
                return {**record, "known": False}
        result = trace(model, tokenizer, request.prompt, request.subject, target=request.target_true,
                       settings=settings)
    except RomevcError as exc:
        log.warning("case %s: %s", case.case_id, exc)
        return {**record, "error": str(exc)}
    # With known_only the check above defines "known" (float32, untouched by --precision): a
    # bfloat16 trace whose clean top-1 differs must not drop a fact that check admitted.
    known = True if known_only else result.top_id == result.answer_id
    return {**record, "known": known, "trace": result.to_dict()}


def _averaged(record: dict, known_only: bool) -> bool:
    return "trace" in record and (record.get("known") is not False or not known_only)


def run_average(model, tokenizer, cases: Iterable, settings: TraceSettings, records_path: str | Path, *,
                known_only: bool = False, limit: int | None = None, progress: bool = True) -> AverageTrace:
    """Trace every case not yet in ``records_path`` (appending as it goes), then average them all.

    With ``known_only``, facts whose clean top-1 token is not the true object's first token
    are skipped, as the paper averages over facts the model knows. With ``limit``, cases
    are read in order only until that many facts are averaged: a small model knows few
    CounterFact facts, so "100 known facts" may take a few thousand records.
    """
    from tqdm.auto import tqdm

    path = Path(records_path)
    identity = {"settings": settings.identity(), "model": getattr(model, "romevc_base_fingerprint", None)}
    cases = list(cases)
    records = read_records(path, identity)
    wanted = len(cases) if limit is None else limit
    chosen: list[dict] = []
    used = 0
    bar = tqdm(total=wanted, desc="tracing facts", unit="fact", file=sys.stderr, disable=not progress)
    for case in cases:
        if used >= wanted:
            break
        record = records.get(case.case_id)
        if not _is_done(record, known_only):
            record = _trace_case(model, tokenizer, case, settings, identity, known_only)
            append_record(path, record)
            records[case.case_id] = record
        chosen.append(record)
        if _averaged(record, known_only):
            used += 1
            bar.update()
    bar.close()
    results = [TraceResult.from_dict(r["trace"]) for r in chosen if _averaged(r, known_only)]
    return average(results, skipped=len(chosen) - len(results))
