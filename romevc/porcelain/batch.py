"""Reading request files (JSONL) and probe files, all-or-nothing, with line numbers.

A request line is a JSON object with ``prompt`` (``{}`` for the subject, or the subject
spelled out), ``subject``, ``target_new`` (or ``target``), optionally ``target_true``,
``message`` and hyperparameter overrides (``layer``, ``method``, ``seed`` at the top level
or inside ``hparams``). CounterFact records (``requested_rewrite``) are accepted too.
Every line is checked before anything is computed, so a bad line 7 refuses the batch
before line 1 costs a second.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from romevc.editing.hparams import RomeHyperParams
from romevc.editing.request import EditRequest
from romevc.errors import RomevcError
from romevc.porcelain.errors import EditSetError

_SHORTCUTS = ("layer", "method", "seed")


@dataclass(frozen=True)
class RequestLine:
    line: int
    request: EditRequest
    hparams: dict[str, Any] = field(default_factory=dict)  # overrides of the family defaults
    message: str | None = None


def _counterfact(data: dict) -> dict:
    """A CounterFact record's requested rewrite as a flat request."""
    rw = data["requested_rewrite"]
    if not isinstance(rw, dict):
        raise EditSetError("`requested_rewrite` must be an object")
    target = lambda key: rw.get(key, {}).get("str") if isinstance(rw.get(key), dict) else rw.get(key)  # noqa: E731
    return {"prompt": rw.get("prompt"), "subject": rw.get("subject"), "target_new": target("target_new"),
            "target_true": target("target_true")}


def _json_line(line: str) -> Any:
    """One line's JSON value; nesting too deep for the parser and lone surrogates (``"\\ud800"``,
    which cannot be stored or tokenised) are refused like any other bad line."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise EditSetError(f"not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise EditSetError("not valid JSON (nested too deeply)") from None
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise EditSetError("holds text that is not valid Unicode (a lone surrogate escape)") from None
    return data


def _parse_line(data: Any) -> tuple[EditRequest, dict, str | None]:
    if not isinstance(data, dict):
        raise EditSetError(f"expected a JSON object, got {type(data).__name__}")
    request = EditRequest.from_dict(_counterfact(data) if "requested_rewrite" in data else data)
    hparams = data.get("hparams") or {}
    if not isinstance(hparams, dict):
        raise EditSetError("`hparams` must be an object")
    hparams = {**hparams, **{k: data[k] for k in _SHORTCUTS if data.get(k) is not None}}
    unknown = set(hparams) - set(RomeHyperParams.__dataclass_fields__)
    if unknown:
        raise EditSetError(f"unknown hyperparameter(s) {', '.join(sorted(unknown))}")
    try:
        RomeHyperParams(**hparams)
    except (TypeError, ValueError) as exc:
        raise EditSetError(str(exc)) from None
    message = data.get("message")
    if message is not None and not isinstance(message, str):
        raise EditSetError("`message` must be a string")
    return request, hparams, message


def _lines(path: str | Path) -> list[tuple[int, str]]:
    """(number, text) of each line, split on newlines only as JSONL says (``str.splitlines``
    would also split inside a JSON string holding U+2028 or a form feed)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EditSetError(f"cannot read {path}: {exc}") from None
    return [(number, line.removesuffix("\r")) for number, line in enumerate(text.split("\n"), start=1)]


def read_requests(path: str | Path) -> list[RequestLine]:
    """Every request of a JSONL file; the first bad line raises with its number."""
    out: list[RequestLine] = []
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            request, hparams, message = _parse_line(_json_line(line))
        except RomevcError as exc:
            raise EditSetError(f"{path}:{number}: {exc}; nothing was written") from None
        out.append(RequestLine(number, request, hparams, message))
    if not out:
        raise EditSetError(f"{path} holds no requests; write one JSON object per line")
    return out


_PROBE_SHAPE = 'expected a JSON object with a non-empty "prompt" (and "subject" when the prompt has {})'


def _probe(line: str) -> str:
    """The prompt of one JSONL probe line, its ``{}`` filled with ``subject``."""
    data = _json_line(line)
    prompt = data.get("prompt") if isinstance(data, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        raise EditSetError(_PROBE_SHAPE)
    if "{}" in prompt:
        subject = data.get("subject")
        if not isinstance(subject, str) or not subject.strip():
            raise EditSetError(_PROBE_SHAPE)
        prompt = prompt.replace("{}", subject, 1)
    return prompt


def read_probes(path: str | Path) -> list[str]:
    """Probe prompts: one per line, or JSONL objects with ``prompt`` (and ``subject`` for ``{}``)."""
    prompts: list[str] = []
    for number, line in _lines(path):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                line = _probe(line)
            except RomevcError as exc:
                raise EditSetError(f"{path}:{number}: {exc}") from None
        prompts.append(line)
    if not prompts:
        raise EditSetError(f"{path} holds no prompts")
    return prompts
