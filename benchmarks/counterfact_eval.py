"""CounterFact (or zsRE) scores of ROME edits on the demo model, next to the unedited model.

    python benchmarks/counterfact_eval.py --n 200                      # one edit at a time
    python benchmarks/counterfact_eval.py --n 200 --sequential          # 200 edits in sequence
    python benchmarks/counterfact_eval.py --n 20 --layer 2 --layer 4    # a layer sweep
    python benchmarks/counterfact_eval.py --n 200 --records r.jsonl --resume   # go on after a stop
    python benchmarks/counterfact_eval.py --n 1000 --sequential --checkpoint-every 100 --records s.jsonl --resume
    python benchmarks/counterfact_eval.py --n 200 --method memit        # one MEMIT batch of 200
    python benchmarks/counterfact_eval.py --data ../shared/data/zsre/zsre-train-1k.json --n 200   # zsRE

Prints one row per (method, layer): ES/PS/NS (%), magnitudes EM/PM/NM, the harmonic mean S,
seconds per edit, ‖ΔW‖, ‖ΔW‖/‖W‖ and the NLL of a neutral paragraph (mean over single edits,
or after all edits with --sequential). Same code as `romevc eval`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from romevc.editing.stats import StatsCache
from romevc.editor import Editor
from romevc.evaluate import load_dataset, render_report, run_evaluation
from romevc.model import load_base

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact-train.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="records from the start of the file")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--base", default=None)
    parser.add_argument("--method", dest="methods", action="append", choices=["r-rome", "rome", "memit", "alphaedit"])
    parser.add_argument("--batch-size", type=int, default=None,
                        help="memit/alphaedit: edits per batch (default: all records in one batch)")
    parser.add_argument("--layer", dest="layers", action="append", type=int)
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--tokens", type=int, default=None, help="statistics tokens (default 100,000)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--records", type=Path, default=None,
                        help="append one JSON line per edit (and per checkpoint) here as the run goes")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the edits already in --records (a run cut short goes on; --sequential replays their stored deltas)")
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="with --sequential: also score the cases edited so far every this many edits")
    args = parser.parse_args()

    loaded = load_base(args.base)
    editor = Editor(loaded, StatsCache(n_tokens=args.tokens) if args.tokens else None)
    cases = load_dataset(args.data, args.n)
    print(f"base {loaded.spec}, {torch.get_num_threads()} threads", flush=True)
    every = args.checkpoint_every
    checkpoints = range(every, len(cases), every) if args.sequential and every > 0 else ()
    done = []
    if args.resume and args.records and args.records.exists():
        done = [json.loads(line) for line in args.records.read_text().splitlines() if line.strip()]
        print(f"resuming: {sum(r.get('kind') == 'edit' for r in done)} edit records in {args.records}", flush=True)
    records = args.records.open("a", encoding="utf-8") if args.records else None

    def write_record(record: dict) -> None:
        if records:
            records.write(json.dumps(record) + "\n")
            records.flush()

    report = run_evaluation(editor, cases, args.methods or ["r-rome", "rome"], args.layers or [editor.hparams().layer],
                            sequential=args.sequential, checkpoints=checkpoints, on_record=write_record,
                            done=done, batch_size=args.batch_size)
    print(render_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
