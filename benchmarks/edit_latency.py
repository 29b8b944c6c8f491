"""Seconds per edit and peak memory: the plain approach (whole model forward and backward at
every step, all logits, parameter gradients — as the reference does) against romevc's fast
path, in the same run, with the cosine between the two deltas.

    python benchmarks/edit_latency.py --n 3

Each mode runs in its own process so that peak resident memory is measured cleanly.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact-train.json"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_mode(fast: bool, n: int, out: Path) -> None:
    """Child process: edit n CounterFact records in one mode, save the deltas and timings."""
    from romevc.editor import Editor
    from romevc.evaluate import load_counterfact
    from romevc.model import load_base

    editor = Editor(load_base(None))
    hp = editor.hparams(fast_path=fast)
    editor.stats.get(editor.model, editor.tokenizer, hp.layer)
    editor.templates(hp)
    cases = load_counterfact(DATA, n)
    rss_ready = peak_rss_mib()
    seconds, tensors = [], {}
    for i, case in enumerate(cases):
        started = time.perf_counter()
        result = editor.compute(case.request, hp)
        seconds.append(time.perf_counter() - started)
        tensors[f"{i}.u"], tensors[f"{i}.v"] = result.delta.u, result.delta.v
    save_file(tensors, str(out / f"{'fast' if fast else 'plain'}.safetensors"))
    (out / f"{'fast' if fast else 'plain'}.json").write_text(json.dumps(
        {"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "rss_before_edits_mib": rss_ready}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--mode", choices=["fast", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        run_mode(args.mode == "fast", args.n, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for mode in ("plain", "fast"):
            subprocess.run([sys.executable, __file__, "--mode", mode, "--n", str(args.n), "--out", tmp], check=True)
        report = {m: json.loads((out / f"{m}.json").read_text()) for m in ("plain", "fast")}
        plain, fast = load_file(str(out / "plain.safetensors")), load_file(str(out / "fast.safetensors"))
    cosines = []
    for i in range(args.n):
        a = torch.outer(plain[f"{i}.v"].double(), plain[f"{i}.u"].double()).flatten()
        b = torch.outer(fast[f"{i}.v"].double(), fast[f"{i}.u"].double()).flatten()
        cosines.append(float(a @ b / (a.norm() * b.norm())))
    med = {m: statistics.median(report[m]["seconds"]) for m in report}
    print(f"{args.n} CounterFact edits on the demo model, {torch.get_num_threads()} threads")
    for m in ("plain", "fast"):
        r = report[m]
        print(f"{m:6} median {med[m]:6.2f} s/edit  (all: {', '.join(f'{s:.1f}' for s in r['seconds'])})  "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB (+{r['peak_rss_mib'] - r['rss_before_edits_mib']:.0f} MiB "
              f"during edits)")
    print(f"ratio fast / plain: {med['fast'] / med['plain']:.3f}")
    print(f"cosine(ΔW fast, ΔW plain): min {min(cosines):.6f}, mean {statistics.mean(cosines):.6f}")


if __name__ == "__main__":
    main()
