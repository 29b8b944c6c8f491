"""Heatmaps of causal traces, drawn like the ROME paper's Figure 1 and Figure 2.

matplotlib is an optional extra (``romevc[trace]``): it is imported only here, on the
Agg backend (no display needed), and its absence is one clear error, raised before a
long trace starts rather than after.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from romevc import paths
from romevc.trace import KIND_TITLES, KINDS, TraceError, TraceResult
from romevc.trace_average import TOKEN_KINDS, AverageTrace

# The paper's colours: purple for hidden states, green for MLPs, red for attention.
CMAPS = {"hidden": "Purples", "mlp": "Greens", "attention": "Reds"}


def require_matplotlib():
    """The pyplot module on the Agg backend, or a ``TraceError`` saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise TraceError("heatmaps need matplotlib: pip install romevc[trace] (or pass --no-plot)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _heatmap(plt, ax, grid, rows: Sequence[str], title: str, cmap: str, label: str, xlabel: str) -> None:
    image = ax.imshow(grid, cmap=cmap, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    step = max(1, len(grid[0]) // 15)
    ax.set_xticks(range(0, len(grid[0]), step))
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    plt.colorbar(image, ax=ax).set_label(label)


def _save(plt, figure, path: Path) -> Path:
    """Render to memory, then write atomically: a killed run never leaves half a PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    paths.atomic_write_bytes(path, buffer.getvalue())
    return path


def token_labels(result: TraceResult) -> list[str]:
    """Each token as it reads (repr without quotes), subject tokens marked with '*' as in the paper."""
    first, end = result.subject_range
    return [repr(token)[1:-1] + ("*" if first <= i < end else "") for i, token in enumerate(result.tokens)]


def plot_trace(result: TraceResult, out_dir: str | Path) -> list[Path]:
    """``hidden.png``, ``mlp.png``, ``attention.png``: p(answer) per (token, layer) restored."""
    plt = require_matplotlib()
    rows = token_labels(result)
    written = []
    for kind in KINDS:
        figure, ax = plt.subplots(figsize=(max(4.0, 0.25 * result.layers + 3), 0.3 * len(rows) + 1.6))
        window = "" if kind == "hidden" else f" ({result.settings.window}-layer window)"
        title = (f"Restoring {KIND_TITLES[kind]}{window}\n"
                 f"answer {result.answer!r}: clean p={result.p_clean:.3f}, corrupted p={result.p_corrupt:.3f}")
        xlabel = "layer" if kind == "hidden" else "centre of the restored window of layers"
        _heatmap(plt, ax, result.grids[kind].numpy(), rows, title, CMAPS[kind], f"p({result.answer.strip()})",
                 xlabel)
        written.append(_save(plt, figure, Path(out_dir) / f"{kind}.png"))
    return written


def plot_average(avg: AverageTrace, path: str | Path) -> Path:
    """One PNG with the three averaged grids (token role × layer) side by side."""
    plt = require_matplotlib()
    import numpy as np

    depth = len(avg.effects["hidden"][0])
    figure, axes = plt.subplots(1, len(KINDS), figsize=(3 * (max(4.0, 0.2 * depth + 2.5)), 3.2))
    for ax, kind in zip(axes, KINDS):
        title = f"Average indirect effect: {KIND_TITLES[kind]}\nover {avg.n_facts} facts"
        _heatmap(plt, ax, np.array(avg.effects[kind], dtype=float), TOKEN_KINDS, title, CMAPS[kind],
                 "AIE", "layer")
    return _save(plt, figure, Path(path))
