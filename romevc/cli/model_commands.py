"""Commands that work on a model directly: demo, predict (also at a commit), stats."""
from __future__ import annotations

import click

from romevc.cli.output import emit, guarded, json_option, model_options


def _load(base, dtype, device_map):
    from romevc.model import load_base

    return load_base(base, dtype=dtype, device_map=device_map)


def _percent(p: float) -> str:
    return f"{100 * p:5.1f}%"


@click.command()
@click.option("--method", type=click.Choice(["r-rome", "rome"]), default="r-rome", show_default=True)
@click.option("--base", default=None, metavar="ID[@REV]", help="Base model (default: the demo model).")
@click.option("--stats-tokens", type=click.IntRange(min=1000), default=100_000, show_default=True,
              help="Tokens of the default corpus for the second-moment statistics.")
@json_option
@guarded
def demo(method: str, base: str | None, stats_tokens: int, as_json: bool) -> None:
    """Edit one fact in the demo model, show it hold, stay local, and undo exactly.

    Example: romevc demo
    """
    from romevc.demo import run_demo

    report = run_demo(base, method, stats_tokens)

    def render(r) -> str:
        lines = [f"base: {r.base}", f"edit: {r.fact}  ({r.method}, layer {r.layer}, ‖ΔW‖ = {r.delta_norm:.3f})", ""]
        kinds = ["edited prompt", "paraphrase", "paraphrase", "neighbour", "neighbour"]
        lines.append(f"{'':14} {'prompt':58} {'before':>14} {'after':>14}")
        for kind, p in zip(kinds, r.probes):
            lines.append(f"{kind:14} {p.prompt[:58]:58} {p.top_before[:14]:>14} {p.top_after[:14]:>14}")
        lines.append("")
        lines.append(f"p(Rome) on the edited prompt: {_percent(r.probes[0].p_new_before)} -> "
                     f"{_percent(r.probes[0].p_new_after)}")
        lines.append(f"restore: every weight bit-identical to the base: {'yes' if r.restored_exactly else 'NO'}")
        lines.append("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in r.seconds.items()))
        return "\n".join(lines)

    emit(report.to_dict(), as_json, lambda _: render(report))


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="[REF] PROMPT")
@click.option("--top-k", "k", default=5, show_default=True, type=click.IntRange(1, 100))
@model_options
@click.option("--repo", "repo_path", default=".", metavar="PATH", help="A folder inside the repository.")
@json_option
@guarded
def predict(args, k, base, dtype, device_map, repo_path, as_json: bool) -> None:
    """Show the model's most likely next tokens after PROMPT.

    With REF, or inside a repository without --base, the model is the one at that commit
    (HEAD by default); otherwise the base given by --base (the demo model by default).

    Example: romevc predict main "The Eiffel Tower is located in the city of" --top-k 5
    """
    from romevc.ledger.errors import NotARepositoryError
    from romevc.predict import top_k
    from romevc.repo import Repo

    if len(args) > 2:
        raise click.UsageError("give PROMPT, or REF PROMPT (quote a prompt with spaces)")
    ref, prompt = (args[0], args[1]) if len(args) == 2 else (None, args[0])
    repo = None
    if ref is not None or base is None:
        try:
            repo = Repo.open(repo_path)
        except NotARepositoryError:
            if ref is not None:
                raise
    if repo is not None:
        with repo:
            commit = repo.ledger.resolve(ref) if ref else repo.ledger.head().commit  # None: no commits yet
            choices = repo.predict(commit, prompt, k)
            where = f"{ref or 'HEAD'} ({commit[:7] if commit else 'the base, no commits yet'})"
    else:
        loaded = _load(base, dtype, device_map)
        choices = top_k(loaded.model, loaded.tokenizer, prompt, k)
        where = str(loaded.spec)
    data = {"prompt": prompt, "base": where,
            "choices": [{"token": c.token, "probability": c.probability} for c in choices]}
    emit(data, as_json, lambda d: "\n".join(f"{_percent(c['probability'])}  {c['token']!r}" for c in d["choices"]))


@click.command()
@click.option("--layer", "layers", type=int, multiple=True, help="Layer(s) to measure (default: the edit layer).")
@click.option("--all-layers", is_flag=True, help="Every layer, in one pass over the corpus.")
@click.option("--corpus", default=None, help="A .txt file, a folder of them, a .jsonl with 'text', or hf:DATASET.")
@click.option("--tokens", "n_tokens", type=click.IntRange(min=1), default=None,
              help="Tokens to measure (default 100,000).")
@model_options
@json_option
@guarded
def stats(layers, all_layers, corpus, n_tokens, base, dtype, device_map, as_json: bool) -> None:
    """Compute and cache second-moment statistics C = E[k kᵀ] of the edited modules.

    Example: romevc stats --layer 4 --tokens 100000
    """
    import time

    from romevc.architectures import default_layer, num_layers
    from romevc.editing.stats import DEFAULT_TOKENS, StatsCache

    loaded = _load(base, dtype, device_map)
    cache = StatsCache(corpus=corpus, n_tokens=n_tokens or DEFAULT_TOKENS)
    chosen = list(range(num_layers(loaded.model))) if all_layers else list(layers) or [default_layer(loaded.model)]
    was_cached = {layer: cache.path(cache.key(loaded.model, layer)).exists() for layer in chosen}
    started = time.perf_counter()
    moments = cache.get_many(loaded.model, loaded.tokenizer, chosen)
    seconds = time.perf_counter() - started
    data = {
        "base": str(loaded.spec), "corpus": cache.corpus.id, "tokens": cache.n_tokens, "seconds": seconds,
        "layers": [{"layer": layer, "module": m.key.module, "stats_id": m.id, "count": m.count,
                    "cached": was_cached[layer], "path": str(cache.path(m.key))} for layer, m in moments.items()],
    }

    def render(d) -> str:
        lines = [f"corpus {d['corpus']}, {d['tokens']} tokens, {d['seconds']:.1f} s"]
        for row in d["layers"]:
            state = "cached" if row["cached"] else "computed"
            lines.append(f"layer {row['layer']:3d}  {row['module']}  {row['stats_id'][:12]}  {state}")
        return "\n".join(lines)

    emit(data, as_json, render)


COMMANDS = [demo, predict, stats]  # `edit` lives in ledger_commands (it commits inside a repository)
