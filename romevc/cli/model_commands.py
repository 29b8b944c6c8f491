"""Commands that work on a model directly: demo, predict, stats, and edits outside a repository."""
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
@json_option
@guarded
def demo(method: str, base: str | None, as_json: bool) -> None:
    """Edit one fact in the demo model, show it hold, stay local, and undo exactly.

    Example: romevc demo
    """
    from romevc.demo import run_demo

    report = run_demo(base, method)

    def render(r) -> str:
        lines = [f"base: {r.base}", f"edit: {r.fact}  ({r.method}, layer {r.layer}, ‖ΔW‖ = {r.delta_norm:.3f})", ""]
        kinds = ["edited prompt", "paraphrase", "paraphrase", "neighbour", "neighbour"]
        lines.append(f"{'':14} {'prompt':58} {'before':>14} {'after':>14}")
        for kind, p in zip(kinds, r.probes):
            lines.append(f"{kind:14} {p.prompt[:58]:58} {p.top_before[:14]:>14} {p.top_after[:14]:>14}")
        lines.append("")
        lines.append(f"p(Rome) on the edited prompt: {_percent(r.probes[0].p_new_before)} -> "
                     f"{_percent(r.probes[0].p_new_after)}")
        lines.append(f"restore: weights bit-identical to the base: {'yes' if r.restored_exactly else 'NO'}")
        lines.append("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in r.seconds.items()))
        return "\n".join(lines)

    emit(report.to_dict(), as_json, lambda _: render(report))


@click.command()
@click.argument("prompt")
@click.option("--top-k", "k", default=5, show_default=True, type=click.IntRange(1, 100))
@model_options
@json_option
@guarded
def predict(prompt: str, k: int, base, dtype, device_map, as_json: bool) -> None:
    """Show the model's most likely next tokens after PROMPT.

    Example: romevc predict "The Eiffel Tower is located in the city of" --top-k 5
    """
    from romevc.predict import top_k

    loaded = _load(base, dtype, device_map)
    choices = top_k(loaded.model, loaded.tokenizer, prompt, k)
    data = {"prompt": prompt, "base": str(loaded.spec),
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


def edit_options(func):
    """The request and hyperparameter options of ``romevc edit``."""
    for option in reversed([
        click.option("--prompt", required=True, help="The fact's prompt, with {} for the subject."),
        click.option("--subject", required=True, help="The subject, as it appears in the prompt."),
        click.option("--target", "target_new", required=True, help="The new object."),
        click.option("--target-true", default=None, help="The current object (for reports)."),
        click.option("--method", type=click.Choice(["r-rome", "rome"]), default=None,
                     help="Edit method (default r-rome)."),
        click.option("--layer", type=int, default=None, help="Layer to edit (default: the family's)."),
        click.option("--seed", type=int, default=None, help="Seed of the context templates (default 0)."),
    ]):
        func = option(func)
    return func


def edit_outside_repository(loaded, request, hparams_overrides: dict) -> dict:
    """Compute one edit on a freshly loaded base and report predictions before and after."""
    from romevc.editor import Editor

    editor = Editor(loaded)
    hp = editor.hparams(**hparams_overrides)
    before = editor.predict(request.text, 1)[0]
    p_before = editor.probability(request.text, request.target_new)
    result = editor.compute(request, hp)
    editor.apply([result])
    after = editor.predict(request.text, 1)[0]
    p_after = editor.probability(request.text, request.target_new)
    editor.restore()
    return {
        "fact": request.fact(), "method": result.method, "layer": result.layer, "module": result.module,
        "delta_norm": result.delta.norm(), "seconds": result.seconds,
        "before": {"top": before.token, "p_top": before.probability, "p_target": p_before},
        "after": {"top": after.token, "p_top": after.probability, "p_target": p_after},
    }


def render_edit(d: dict) -> str:
    return "\n".join([
        f"edit: {d['fact']}  ({d['method']}, {d['module']}, ‖ΔW‖ = {d['delta_norm']:.3f}, {d['seconds']:.1f} s)",
        f"before: {d['before']['top']!r} ({_percent(d['before']['p_top']).strip()}), "
        f"p(target) {_percent(d['before']['p_target']).strip()}",
        f"after:  {d['after']['top']!r} ({_percent(d['after']['p_top']).strip()}), "
        f"p(target) {_percent(d['after']['p_target']).strip()}",
    ])


@click.command()
@edit_options
@model_options
@json_option
@guarded
def edit(prompt, subject, target_new, target_true, method, layer, seed, base, dtype, device_map, as_json):
    """Rewrite one fact and show the prediction before and after.

    Example: romevc edit --prompt "{} is located in the city of" --subject "The Eiffel Tower" --target Rome
    """
    from romevc.editing.request import EditRequest

    request = EditRequest(prompt, subject, target_new, target_true)
    loaded = _load(base, dtype, device_map)
    data = edit_outside_repository(loaded, request, {"method": method, "layer": layer, "seed": seed})
    emit(data, as_json, render_edit)


COMMANDS = [demo, predict, stats, edit]
