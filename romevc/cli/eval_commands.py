"""``romevc eval``: CounterFact and zsRE scores of edits on a base model."""
from __future__ import annotations

import click

from romevc.cli.output import emit, guarded, json_option, model_options


@click.command(name="eval")
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False))
@click.option("--n", "n", type=click.IntRange(min=1), default=200, show_default=True, help="Records to use.")
@click.option("--method", "methods", type=click.Choice(["r-rome", "rome", "memit", "alphaedit"]), multiple=True,
              help="Edit method(s) (default: r-rome and rome).")
@click.option("--layer", "layers", type=int, multiple=True,
              help="Layer(s) to edit with rome / r-rome (default: the family's). MEMIT uses its family's range.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="MEMIT / AlphaEdit: requests per batch (default: all records in one batch).")
@click.option("--sequential", is_flag=True,
              help="Apply the edits (MEMIT: the batches) one after another, then score all.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=None,
              help="With --sequential: also score the records edited so far every N edits.")
@click.option("--tokens", "n_tokens", type=click.IntRange(min=1), default=None,
              help="Statistics tokens (default 100,000).")
@click.option("--gen-tokens", type=click.IntRange(min=0), default=100, show_default=True,
              help="CounterFact original format: length in tokens (prompt included) of each text sampled "
                   "for generation entropy GE, as the paper's 100; 0 turns generation off.")
@model_options
@json_option
@guarded
def evaluate(dataset, n, methods, layers, batch_size, sequential, checkpoint_every, n_tokens, gen_tokens,
             base, dtype, device_map, as_json) -> None:
    """Edit each record of a CounterFact or zsRE file and score efficacy, generalisation, specificity.

    CounterFact (original or simplified split format): ES/PS/NS, magnitudes, harmonic mean S;
    the original format's generation prompts add the generation entropy GE (fluency).
    zsRE (MEND/ROME format): teacher-forced top-1 token accuracy, as in the ROME paper's Table 1.
    MEMIT and AlphaEdit edit the records in batches, each scored on the model carrying its batch;
    with --sequential, AlphaEdit's batches also protect the keys of the batches before them.

    Example: romevc eval ../shared/data/counterfact/counterfact-train.json --n 50 --method r-rome
    """
    from romevc.editing.stats import DEFAULT_TOKENS, StatsCache
    from romevc.editor import Editor
    from romevc.evaluate import load_dataset, render_report, run_evaluation
    from romevc.model import load_base

    if checkpoint_every and not sequential:
        raise click.UsageError("--checkpoint-every needs --sequential")
    if batch_size and not {"memit", "alphaedit"} & set(methods):
        raise click.UsageError("--batch-size needs --method memit or alphaedit")
    cases = load_dataset(dataset, n)
    checkpoints = range(checkpoint_every, len(cases), checkpoint_every) if checkpoint_every else ()
    editor = Editor(load_base(base, dtype=dtype, device_map=device_map), StatsCache(n_tokens=n_tokens or DEFAULT_TOKENS))
    report = run_evaluation(editor, cases, list(methods) or ["r-rome", "rome"],
                            list(layers) or [editor.hparams().layer], sequential=sequential,
                            checkpoints=checkpoints, batch_size=batch_size, gen_tokens=gen_tokens)
    emit(report, as_json, render_report)


COMMANDS = [evaluate]
