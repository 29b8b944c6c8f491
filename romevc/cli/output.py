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


def guarded(func: Callable) -> Callable:
    """Turn a ``RomevcError`` raised by a command into a one-line ``error:`` and exit 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
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
