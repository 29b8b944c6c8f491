"""``romevc trace``: causal tracing of one fact, or its average over a CounterFact file."""
from __future__ import annotations

import time
from pathlib import Path

import click

from romevc.cli.output import emit, guarded, json_option, model_options

RECORDS = "average-facts.jsonl"  # one line per traced fact: a rerun skips those already there


def _render_trace(d: dict) -> str:
    first, end = d["subject_range"]
    answer = (f"answer:  {d['answer']!r}   p clean {d['p_clean']:.4f}, corrupted {d['p_corrupt']:.4f}"
              f"   (noise {d['settings']['noise']:g} × embedding std = {d['noise_std']:.4f},"
              f" {d['settings']['samples']} samples, seed {d['settings']['seed']})")
    lines = [f"prompt:  {d['text']}", f"subject: {d['subject']}  (tokens {first}..{end - 1})", answer,
             "strongest restorations, p(answer):"]
    for kind, peaks in d["peaks"].items():
        overall, at_subject = peaks["overall"], peaks["last_subject_token"]
        lines.append(f"  {kind:9}  {overall['p']:.4f} at {overall['token']!r} layer {overall['layer']};"
                     f"  at the last subject token {at_subject['p']:.4f}, layer {at_subject['layer']}")
    lines.append(f"wrote {', '.join(d['files'])}  ({d['seconds']:.1f} s)")
    return "\n".join(lines)


def _render_average(d: dict) -> str:
    from romevc.trace import KIND_TITLES
    from romevc.trace_average import TOKEN_KINDS

    short = ["subj 1st", "subj mid", "subj last", "next", "further", "last"]
    lines = [(f"average indirect effect p(restored) − p(corrupted) over {d['n_facts']} facts"
              f" ({d['skipped']} skipped); mean p clean {d['p_clean']:.4f}, corrupted {d['p_corrupt']:.4f}")]
    for kind, grid in d["effects"].items():
        lines += ["", f"{KIND_TITLES[kind]}:", "layer " + "".join(f"{name:>10}" for name in short)]
        for layer in range(len(grid[0])):
            cells = [grid[role][layer] for role in range(len(TOKEN_KINDS))]
            lines.append(f"{layer:5d} " + "".join("       n/a" if c is None else f"{c:10.4f}" for c in cells))
    if "suggested_layer" in d:
        s = d["suggested_layer"]
        lines += ["", (f"suggested edit layer: {s['layer']}  (highest average MLP indirect effect at the last "
                       f"subject token: {s['effect']:.4f})")]
    lines.append(f"wrote {', '.join(d['files'])}  ({d['seconds']:.1f} s)")
    return "\n".join(lines)


def _peaks(result) -> dict:
    last_subject = result.subject_range[1] - 1
    out = {}
    for kind in result.grids:
        token, layer, p = result.peak(kind)
        _, at_layer, at_p = result.peak(kind, last_subject)
        out[kind] = {"overall": {"token": result.tokens[token], "token_index": token, "layer": layer, "p": p},
                     "last_subject_token": {"token_index": last_subject, "layer": at_layer, "p": at_p}}
    return out


@click.command()
@click.argument("prompt", required=False)
@click.option("--subject", default=None, help="The subject, as written in PROMPT (its tokens are corrupted).")
@click.option("--target", default=None, help="Trace this object's first token (default: the model's top-1 token).")
@click.option("--average", "average_file", default=None, metavar="FILE",
              help="CounterFact JSON (original or split format): average over its facts, answer = the true object.")
@click.option("--n", "n_facts", type=click.IntRange(min=1), default=100, show_default=True,
              help="With --average: facts to average (with --known-only: known facts, reading on through FILE).")
@click.option("--known-only", is_flag=True,
              help="With --average: skip facts whose top-1 token is not the true object (as the paper does).")
@click.option("--suggest-layer", is_flag=True,
              help="With --average: print the layer with the highest MLP effect at the last subject token.")
@click.option("--samples", type=click.IntRange(min=1), default=10, show_default=True, help="Noise samples per run.")
@click.option("--noise", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True,
              help="Noise std as a multiple of the token-embedding std.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the noise.")
@click.option("--window", type=click.IntRange(min=1), default=10, show_default=True,
              help="Layers of MLP/attention outputs restored together.")
@click.option("--precision", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="bfloat16: matrix products in bfloat16 autocast, logits float32 (several times faster on AMX CPUs).")
@click.option("--out", "out_dir", default="trace", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the JSON, safetensors, PNGs (and the resumable per-fact JSONL).")
@click.option("--no-plot", is_flag=True, help="Skip the PNG heatmaps (no matplotlib needed).")
@model_options
@json_option
@guarded
def trace(prompt, subject, target, average_file, n_facts, known_only, suggest_layer, samples, noise, seed, window,
          precision, out_dir, no_plot, base, dtype, device_map, as_json) -> None:
    """Causal tracing (ROME paper, section 2): which states carry the fact.

    Corrupts the subject's token embeddings with noise, then restores one clean state at a
    time (hidden state, MLP outputs, attention outputs; per token and layer) and measures
    p(answer). Writes trace.json, trace.safetensors and three heatmaps to --out.

    With --average FILE, traces many CounterFact facts and reports the average indirect
    effect per layer and token role (the paper's Figure 2); rerunning with the same --out
    skips facts already traced.

    Example: romevc trace "The Eiffel Tower is located in the city of" --subject "The Eiffel Tower"

    Example: romevc trace --average counterfact.json --n 100 --suggest-layer
    """
    from romevc.model import load_base
    from romevc.trace import TraceSettings, subject_slot

    if average_file is None and (prompt is None or subject is None):
        raise click.UsageError("give PROMPT and --subject, or --average FILE")
    if average_file is not None and (prompt is not None or subject is not None or target is not None):
        raise click.UsageError("--average traces the facts in FILE: leave out PROMPT, --subject and --target")
    if (suggest_layer or known_only) and average_file is None:
        raise click.UsageError("--suggest-layer and --known-only need --average")
    if average_file is None:
        subject_slot(prompt, subject)  # a subject not in the prompt fails before the model loads
    settings = TraceSettings(samples=samples, noise=noise, seed=seed, window=window, precision=precision)
    if not no_plot:
        from romevc.trace_plot import require_matplotlib

        require_matplotlib()  # fail now, not after the trace
    out = Path(out_dir)
    started = time.perf_counter()
    if average_file is not None:
        from romevc.evaluate import load_counterfact

        cases = load_counterfact(average_file, None if known_only else n_facts)
        loaded = load_base(base, dtype=dtype, device_map=device_map)
        _average(loaded, cases, n_facts, settings, out, known_only, suggest_layer, no_plot, started, as_json)
        return
    from romevc.trace import trace as run_trace

    loaded = load_base(base, dtype=dtype, device_map=device_map)
    result = run_trace(loaded.model, loaded.tokenizer, prompt, subject, target=target, settings=settings,
                       progress=True)
    files = result.save(out)
    if not no_plot:
        from romevc.trace_plot import plot_trace

        files += plot_trace(result, out)
    data = {**result.to_dict(), "base": str(loaded.spec), "peaks": _peaks(result), "files": [str(f) for f in files],
            "seconds": time.perf_counter() - started}
    emit(data, as_json, _render_trace)


def _average(loaded, cases, n_facts, settings, out: Path, known_only, suggest_layer, no_plot, started,
             as_json) -> None:
    import json

    from romevc import paths
    from romevc.trace_average import run_average

    avg = run_average(loaded.model, loaded.tokenizer, cases, settings, out / RECORDS, known_only=known_only,
                      limit=n_facts)
    data = {**avg.to_dict(), "base": str(loaded.spec), "settings": settings.identity(), "known_only": known_only}
    if suggest_layer:
        layer, effect = avg.suggest_layer()
        data["suggested_layer"] = {"layer": layer, "effect": effect}
    files = [out / "average.json"]
    paths.atomic_write_text(files[0], json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
    if not no_plot:
        from romevc.trace_plot import plot_average

        files.append(plot_average(avg, out / "average.png"))
    data.update(files=[str(f) for f in files] + [str(out / RECORDS)], seconds=time.perf_counter() - started)
    emit(data, as_json, _render_average)


COMMANDS = [trace]
