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
        RomeHyperParams(**{k: (tuple(map(tuple, v)) if k == "templates" else v) for k, v in hparams.items()})
    except (TypeError, ValueError) as exc:
        raise EditSetError(str(exc)) from None
    message = data.get("message")
    if message is not None and not isinstance(message, str):
        raise EditSetError("`message` must be a string")
    return request, hparams, message


def read_requests(path: str | Path) -> list[RequestLine]:
    """Every request of a JSONL file; the first bad line raises with its number."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EditSetError(f"cannot read {path}: {exc}") from None
    out: list[RequestLine] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            request, hparams, message = _parse_line(json.loads(line))
        except json.JSONDecodeError as exc:
            raise EditSetError(f"{path}:{number}: not valid JSON ({exc.msg}); nothing was written") from None
        except RomevcError as exc:
            raise EditSetError(f"{path}:{number}: {exc}; nothing was written") from None
        out.append(RequestLine(number, request, hparams, message))
    if not out:
        raise EditSetError(f"{path} holds no requests; write one JSON object per line")
    return out


def read_probes(path: str | Path) -> list[str]:
    """Probe prompts: one per line, or JSONL objects with ``prompt`` (and ``subject`` for ``{}``)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EditSetError(f"cannot read {path}: {exc}") from None
    prompts: list[str] = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                data = json.loads(line)
                prompt = data["prompt"]
                if "{}" in prompt:
                    prompt = prompt.replace("{}", data["subject"], 1)
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise EditSetError(f"{path}:{number}: expected a JSON object with \"prompt\" "
                                   "(and \"subject\" when the prompt has {})") from None
            line = prompt
        prompts.append(line)
    if not prompts:
        raise EditSetError(f"{path} holds no prompts")
    return prompts
