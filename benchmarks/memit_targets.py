"""MEMIT's per-request targets one at a time against requests optimised side by side
(``target_group``), on the demo model, in the same run: seconds per fact, and how far the
targets move (relative to each δ) when the rows are batched.

    python benchmarks/memit_targets.py --n 20 --groups 1 5 10 20

The targets are the bulk of a MEMIT batch's cost (the per-layer solves are seconds).
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact-train.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="CounterFact-train records (the first n)")
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 5, 10, 20])
    args = parser.parse_args()

    from romevc.architectures import architecture_for
    from romevc.editing.memit import batch_prompts, keys_and_hidden, optimise_targets
    from romevc.editor import Editor
    from romevc.evaluate import load_counterfact
    from romevc.model import load_base

    editor = Editor(load_base(None))
    model, tokenizer = editor.model, editor.tokenizer
    arch = architecture_for(model)
    hp = editor.memit_hparams()
    templates = editor.templates(hp)
    requests = [case.request for case in load_counterfact(DATA, args.n)]
    prompts = batch_prompts(tokenizer, requests, templates, hp.kl_prompt)
    _, hidden = keys_and_hidden(model, arch, hp.layers[-1], hp.layers[-1], prompts)
    print(f"{args.n} CounterFact requests, layers {list(hp.layers)}, {len(templates)} templates, "
          f"{torch.get_num_threads()} threads")
    reference = None
    for group in args.groups:
        group_hp = type(hp).from_dict({**hp.to_dict(), "target_group": group})
        started = time.perf_counter()
        targets, losses = optimise_targets(model, arch, prompts, hidden, group_hp, progress=False)
        seconds = time.perf_counter() - started
        steps = sum(map(len, losses))
        line = (f"target_group {group:3}: {seconds / args.n:6.2f} s/fact  {seconds / steps:6.3f} "
                f"s per request-step ({steps} steps)  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        if reference is None:
            reference = (targets, losses)
        else:
            moved = (reference[0] - hidden.double()).norm(dim=1)
            gap = (targets - reference[0]).norm(dim=1) / moved.clamp(min=1e-12)
            same_steps = sum(len(a) == len(b) for a, b in zip(losses, reference[1]))
            line += f"  ‖Δz‖/‖δ‖ vs the first row: max {gap.max():.2e}, same step counts {same_steps}/{args.n}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
