"""MEMIT on the demo model: one batch of CounterFact edits under several layer ranges and λ.

    python benchmarks/memit_layers.py --n 10 --range 3-5 --range 2-6 --weight 15000 --weight 2000

The δ optimisation depends only on the range's last layer, so it runs once per last layer
and is shared by every range ending there and every λ; the layer updates are then computed
per (range, λ). Prints one row per (range, λ): ES/PS/NS (%) over the batch, the neutral
paragraph's NLL, ‖ΔW‖ per layer, and the seconds a full ``compute_memit`` would take
(targets + layer updates).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from statistics import mean

import torch

from romevc.architectures import architecture_for
from romevc.editing import delta as deltas
from romevc.editing.memit import batch_prompts, keys_and_hidden, optimise_targets, spread_over_layers
from romevc.editing.memit_hparams import MemitHyperParams
from romevc.editing.stats import StatsCache
from romevc.editing.templates import generate_templates
from romevc.evaluate import load_counterfact, neutral_nll, score_case
from romevc.model import load_base

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact-train.json"


def _range(text: str) -> tuple[int, ...]:
    first, _, last = text.partition("-")
    return tuple(range(int(first), int(last or first) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="records from the start of the file, edited as one batch")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--range", dest="ranges", action="append", type=_range, help="e.g. 3-5")
    parser.add_argument("--weight", dest="weights", action="append", type=float, help="mom2_update_weight λ")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ranges = args.ranges or [(3, 4, 5), (2, 3, 4, 5, 6)]
    weights = args.weights or [15_000.0]

    loaded = load_base(None)
    model, tokenizer = loaded.model, loaded.tokenizer
    arch = architecture_for(model)
    cases = load_counterfact(args.data, args.n)
    requests = [c.request for c in cases]
    stats = StatsCache()
    moments = stats.get_many(model, tokenizer, sorted({l for r in ranges for l in r}))
    templates = generate_templates(model, tokenizer, args.seed)
    print(f"base {loaded.spec}, {torch.get_num_threads()} threads, {len(requests)} requests in one batch", flush=True)
    unedited = [score_case(model, tokenizer, c) for c in cases]
    print(f"unedited: ES {100 * mean(s.efficacy for s in unedited):.0f} PS {100 * mean(s.paraphrase for s in unedited):.0f} "
          f"NS {100 * mean(s.neighbourhood for s in unedited):.0f} textNLL {neutral_nll(model, tokenizer):.3f}", flush=True)

    targets: dict[int, tuple[torch.Tensor, float]] = {}
    for layers in ranges:
        hp = MemitHyperParams(layers=layers, seed=args.seed)
        prompts = batch_prompts(tokenizer, requests, templates, hp.kl_prompt)
        if layers[-1] not in targets:
            started = time.perf_counter()
            _, hidden = keys_and_hidden(model, arch, layers[-1], layers[-1], prompts)
            z, _ = optimise_targets(model, arch, prompts, hidden, hp)
            targets[layers[-1]] = (z, time.perf_counter() - started)
        z, z_seconds = targets[layers[-1]]
        for weight in weights:
            hp = MemitHyperParams(layers=layers, seed=args.seed, mom2_update_weight=weight)
            started = time.perf_counter()
            made = spread_over_layers(model, arch, prompts, z, moments, hp)
            seconds = z_seconds + time.perf_counter() - started
            try:
                scores = [score_case(model, tokenizer, c) for c in cases]
                nll = neutral_nll(model, tokenizer)
            finally:
                deltas.restore(model)
            norms = " ".join(f"{d.norm():.1f}" for d in made)
            print(f"layers {layers[0]}-{layers[-1]} λ {weight:g}: ES {100 * mean(s.efficacy for s in scores):.0f} "
                  f"PS {100 * mean(s.paraphrase for s in scores):.0f} NS {100 * mean(s.neighbourhood for s in scores):.0f} "
                  f"EM {100 * mean(s.efficacy_margin for s in scores):.1f} textNLL {nll:.3f} ‖ΔW‖ {norms} "
                  f"{seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
