"""``romevc eval``: CounterFact and zsRE scores of edits on a base model."""
from __future__ import annotations

import click

from romevc.cli.output import emit, guarded, json_option, model_options


@click.command(name="eval")
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False))
@click.option("--n", "n", type=click.IntRange(min=1), default=200, show_default=True, help="Records to use.")
@click.option("--method", "methods", type=click.Choice(["r-rome", "rome"]), multiple=True,
              help="Edit method(s) (default: r-rome and rome).")
@click.option("--layer", "layers", type=int, multiple=True, help="Layer(s) to edit (default: the family's).")
@click.option("--sequential", is_flag=True, help="Apply the edits one after another, then score all.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=None,
              help="With --sequential: also score the records edited so far every N edits.")
@click.option("--tokens", "n_tokens", type=click.IntRange(min=1), default=None,
              help="Statistics tokens (default 100,000).")
@model_options
@json_option
@guarded
def evaluate(dataset, n, methods, layers, sequential, checkpoint_every, n_tokens, base, dtype, device_map, as_json) -> None:
    """Edit each record of a CounterFact or zsRE file and score efficacy, generalisation, specificity.

    CounterFact (original or simplified split format): ES/PS/NS, magnitudes, harmonic mean S.
    zsRE (MEND/ROME format): teacher-forced top-1 token accuracy, as in the ROME paper's Table 1.

    Example: romevc eval ../shared/data/counterfact/counterfact-train.json --n 50 --method r-rome
    """
    from romevc.editing.stats import DEFAULT_TOKENS, StatsCache
    from romevc.editor import Editor
    from romevc.evaluate import load_dataset, render_report, run_evaluation
    from romevc.model import load_base

    if checkpoint_every and not sequential:
        raise click.UsageError("--checkpoint-every needs --sequential")
    cases = load_dataset(dataset, n)
    checkpoints = range(checkpoint_every, len(cases), checkpoint_every) if checkpoint_every else ()
    editor = Editor(load_base(base, dtype=dtype, device_map=device_map), StatsCache(n_tokens=n_tokens or DEFAULT_TOKENS))
    report = run_evaluation(editor, cases, list(methods) or ["r-rome", "rome"],
                            list(layers) or [editor.hparams().layer], sequential=sequential,
                            checkpoints=checkpoints)
    emit(report, as_json, render_report)


COMMANDS = [evaluate]
