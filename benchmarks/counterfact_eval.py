"""CounterFact scores of ROME edits on the demo model (or any base), next to the unedited model.

    python benchmarks/counterfact_eval.py --n 200                      # one edit at a time
    python benchmarks/counterfact_eval.py --n 200 --sequential          # 200 edits in sequence
    python benchmarks/counterfact_eval.py --n 20 --layer 2 --layer 4    # a layer sweep

Prints one row per (method, layer): ES/PS/NS (%), magnitudes, seconds per edit, ‖ΔW‖ and the
NLL of a neutral paragraph (mean over single edits, or after all edits with --sequential).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from romevc.editor import Editor
from romevc.editing.stats import StatsCache
from romevc.evaluate import evaluate_edits, evaluate_unedited, load_counterfact, neutral_nll
from romevc.model import load_base

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact-train.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="records from the start of the file")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--base", default=None)
    parser.add_argument("--method", dest="methods", action="append", choices=["r-rome", "rome"])
    parser.add_argument("--layer", dest="layers", action="append", type=int)
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--tokens", type=int, default=None, help="statistics tokens (default 100,000)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    loaded = load_base(args.base)
    editor = Editor(loaded, StatsCache(n_tokens=args.tokens) if args.tokens else None)
    cases = load_counterfact(args.data, args.n)
    methods = args.methods or ["r-rome", "rome"]
    layers = args.layers or [editor.hparams().layer]
    editor.stats.get_many(editor.model, editor.tokenizer, layers)
    print(f"base {loaded.spec}, {len(cases)} CounterFact records, threads {torch.get_num_threads()}")

    started = time.perf_counter()
    unedited = evaluate_unedited(editor, cases)
    rows = [("unedited", "-", unedited, float("nan"), float("nan"), float("nan"),
             neutral_nll(editor.model, editor.tokenizer))]
    runs = []
    for method in methods:
        for layer in layers:
            run = evaluate_edits(editor, cases, editor.hparams(method=method, layer=layer), sequential=args.sequential)
            runs.append(run)
            rows.append((method, str(layer), run.summary, run.seconds_per_edit, run.mean_delta_norm,
                         run.mean_relative_norm, run.neutral_nll))
            print(f"  done {method} layer {layer}: {run.summary.ES:.1f}/{run.summary.PS:.1f}/{run.summary.NS:.1f}",
                  flush=True)

    mode = "sequential" if args.sequential else "one edit at a time from the unedited model"
    print(f"\n{len(cases)} records, {mode}, total {time.perf_counter() - started:.0f} s")
    print(f"{'method':9} {'layer':>5} {'ES':>6} {'PS':>6} {'NS':>6} {'EM':>6} {'PM':>6} {'NM':>6} {'S':>6} "
          f"{'s/edit':>7} {'|dW|':>7} {'|dW|/|W|':>8} {'textNLL':>7}")
    for method, layer, s, sec, norm, rel, nll in rows:
        print(f"{method:9} {layer:>5} {s.ES:6.1f} {s.PS:6.1f} {s.NS:6.1f} {s.EM:6.1f} {s.PM:6.1f} {s.NM:6.1f} "
              f"{s.S:6.1f} {sec:7.1f} {norm:7.2f} {rel:8.3f} {nll:7.3f}")
    if args.json:
        args.json.write_text(json.dumps({"unedited": unedited.to_dict(), "runs": [r.to_dict() for r in runs],
                                         "n": len(cases), "sequential": args.sequential}, indent=2))


if __name__ == "__main__":
    main()
