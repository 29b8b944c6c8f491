"""Shared CLI plumbing: ``--json`` output, one-line errors, model options."""
from __future__ import annotations

import functools
import json
from typing import Any, Callable

import click

from romevc.errors import RomevcError


class UserError(click.ClickException):
    """Shown as ``error: …`` with exit status 1 (CliRunner and the console script alike)."""

    def format_message(self) -> str:
        return self.message

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _check_text(kwargs: dict[str, Any]) -> None:
    """Refuse an argument with a lone surrogate: how Python spells bytes of a command line that
    are not UTF-8. No name, ref, message or path romevc stores or looks up can hold one."""
    for name, value in kwargs.items():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    ctx = click.get_current_context(silent=True)
                    param = next((p for p in (ctx.command.params if ctx else []) if p.name == name), None)
                    shown = param.opts[0] if param is not None and param.opts and param.opts[0].startswith("-") else \
                        (param.human_readable_name if param is not None else name)
                    raise UserError(f"{shown} is not valid UTF-8 text ({item!r}); retype it") from None


def guarded(func: Callable) -> Callable:
    """Turn a ``RomevcError`` raised by a command into a one-line ``error:`` and exit 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        _check_text(kwargs)
        try:
            return func(*args, **kwargs)
        except RomevcError as exc:
            raise UserError(str(exc)) from None

    return wrapper


def json_option(func: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(func)


def emit(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    """Print ``data`` as JSON (sorted keys, indent 2) or through ``render`` for people."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        text = render(data)
        if text:
            click.echo(text)


def model_options(func: Callable) -> Callable:
    """--base, --dtype and --device-map, shared by every command that loads a model."""
    func = click.option("--device-map", default=None,
                        help="accelerate device map, e.g. 'auto' to spread a large model over GPUs.")(func)
    func = click.option("--dtype", default="float32", show_default=True,
                        type=click.Choice(["auto", "float32", "float16", "bfloat16"]),
                        help="Weight dtype to load the base in.")(func)
    func = click.option("--base", default=None, metavar="ID[@REV]",
                        help="Hub id (org/name@revision), local folder, GGUF file, or 'smollm2-135m' "
                             "(the demo model, default).")(func)
    return func
