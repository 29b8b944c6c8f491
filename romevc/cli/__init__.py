"""The ``romevc`` command: a thin click layer over the library.

Each command parses its arguments, makes one library call and prints, as text for
people or as JSON with ``--json``. A ``RomevcError`` becomes one ``error:`` line on
stderr and exit status 1; only bugs produce tracebacks.
"""
from __future__ import annotations

import logging

import click

from romevc.cli import eval_commands, ledger_commands, model_commands
from romevc.cli import remote_commands, trace_commands


@click.group()
@click.version_option(package_name="romevc")
@click.option("-v", "--verbose", is_flag=True, help="Log what romevc is doing.")
def cli(verbose: bool) -> None:
    """Version control for fact edits of GPT-style language models (ROME)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="romevc: %(message)s")


for _command in model_commands.COMMANDS + ledger_commands.COMMANDS + eval_commands.COMMANDS + remote_commands.COMMANDS \
        + trace_commands.COMMANDS:
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="romevc")
