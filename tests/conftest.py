"""Shared fixtures: the tiny trained GPT-2, tiny random models of every family, the demo model."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
TINY_GPT2 = FIXTURES / "tiny-gpt2"


def pytest_configure(config) -> None:
    """Caches go to a throwaway folder; the converted demo model stays where `romevc demo` put it,
    so the one-time conversion is shared between the demo and the tests."""
    from romevc import paths

    os.environ.setdefault("ROMEVC_MODELS", str(paths.models_dir()))
    os.environ["ROMEVC_CACHE"] = tempfile.mkdtemp(prefix="romevc-test-cache-")


@pytest.fixture(scope="session")
def tiny_gpt2():
    from romevc.model import load_base

    return load_base(str(TINY_GPT2))


@pytest.fixture()
def tiny_stats(tmp_path):
    from romevc.editing.stats import StatsCache

    return StatsCache(root=tmp_path / "stats", corpus=str(TINY_GPT2 / "corpus.txt"), n_tokens=3000,
                      progress=False)


@pytest.fixture(scope="session")
def demo_loaded(tmp_path_factory):
    """The SmolLM2 demo model (converted once into the shared demo cache)."""
    from romevc import model

    return model.load_base(None)


@pytest.fixture(scope="session")
def demo_editor(demo_loaded, tmp_path_factory):
    from romevc.editing.stats import StatsCache
    from romevc.editor import Editor

    # The session's cache root: `romevc demo --stats-tokens 20000` in the CLI test reuses these statistics.
    stats = StatsCache(n_tokens=20_000, progress=False)
    return Editor(demo_loaded, stats)


def tiny_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TINY_GPT2))


def seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


@pytest.fixture(scope="module")
def one_thread():
    """Two shared cores: one torch thread is both faster and reproducible there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    """A module's own copy of the tiny GPT-2: repositories leave their checkout applied to it."""
    from romevc.model import load_base

    return load_base(str(TINY_GPT2))


@pytest.fixture()
def invoke_cli(monkeypatch, tmp_path):
    """``invoke_cli(*args, code=0)`` runs ``romevc`` with a private cache and checks the exit code."""
    from click.testing import CliRunner

    from romevc.cli import cli

    monkeypatch.setenv("ROMEVC_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()

    def invoke(*args: str, code: int = 0):
        result = runner.invoke(cli, list(args))
        assert result.exit_code == code, (result.output, result.exception)
        return result
    return invoke


def pytest_terminal_summary(terminalreporter) -> None:
    """Say which backends the ledger tests ran on, and why PostgreSQL did not when it did not."""
    from tests import ledger_backends

    line = ledger_backends.summary()
    if line:
        terminalreporter.write_sep("-", "ledger backends")
        terminalreporter.write_line(line)
    from tests.fault_report import SECTIONS

    for section, lines in SECTIONS.items():
        terminalreporter.write_sep("-", section)
        for line in lines:
            terminalreporter.write_line(line)
