"""The ledger's costs on the demo model (SmolLM2-135M), with synthetic deltas of the right shapes.

    python benchmarks/ledger.py                  # the full run (10,000-commit history)
    python benchmarks/ledger.py --quick          # a smaller history, for a smoke test

It prints, each against a baseline measured in the same run:

1. bytes per edit in the ledger vs the edited module (one down_proj) and the full checkpoint;
2. seconds to check out a commit of 1, 100 and 1,000 edits from a closed repository (edits at
   random layers, so 1,000 of them rewrite every layer's module; 1,000 at the edit layer,
   which is what ``romevc edit`` makes; and 1,000 rank-one pieces over MEMIT's layers)
   (open it, load the base and its tokenizer, read and apply the edit set) vs a plain
   ``AutoModelForCausalLM.from_pretrained`` of the base (alone, and with
   ``AutoTokenizer.from_pretrained``, which a checkout also does), and a switch between
   commits of an already-open repository (the cached base, no reload). Imports are
   warm in both: this measures loading, not starting Python;
3. seconds for ``log`` and ``diff`` on a long history: each commit adds a new edit and,
   once the set holds ``--window`` edits, drops the oldest (a snapshot ledger stores each
   commit's whole set, so an unbounded history of N edits would store N²/2 set rows).

Synthetic deltas are random rank-one (u, v) of the edited module's shapes at random layers:
checkout, log and diff never look at what an edit means, only at its bytes.
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _synthetic_edits(n: int, info, d_in: int, d_out: int, layers: int, seed: int = 0,
                     at: tuple[int, ...] | None = None):
    """n random rank-one edits, each at a random layer (or at the layers ``at``, in turn)."""
    from romevc.ledger import EditRecord

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        layer = int(rng.integers(layers)) if at is None else at[i % len(at)]
        u = (rng.standard_normal(d_in) / d_in).astype("<f4").tobytes()
        v = (rng.standard_normal(d_out) * 1e-3).astype("<f4").tobytes()
        out.append(EditRecord.create(
            request={"prompt": "{} is located in the city of", "subject": f"Landmark {i}", "target_new": "Rome"},
            method="r-rome", hparams={"layer": layer}, seed=0, templates=["{}"], layer=layer,
            module=info.module_template.format(layer), layout=info.layout, u=u, v=v, stats_id=None,
            weights_fingerprint=None, author="bench", time=i,
        ))
    return out


def _db_bytes(path: Path) -> int:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def _plain_load(folder: Path) -> tuple[float, float]:
    """Seconds of ``from_pretrained`` of the model alone, and of the model and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gc.collect()
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    alone = time.perf_counter() - t
    AutoTokenizer.from_pretrained(folder)
    both = time.perf_counter() - t
    del model
    return alone, both


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000-commit history, window 20")
    parser.add_argument("--commits", type=int, default=10_000, help="commits in the log/diff history")
    parser.add_argument("--window", type=int, default=100, help="edits in each commit's set, at most")
    parser.add_argument("--rounds", type=int, default=5, help="checkout measurements of each kind (median and best)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (the full run writes ~600 MB)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared machine, more threads than free cores are far slower)")
    args = parser.parse_args()
    if args.quick:
        args.commits, args.window = 1_000, 20
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)

    from romevc.architectures import default_layer
    from romevc.editing.memit_hparams import memit_defaults
    from romevc.ledger import CommitRecord
    from romevc.model import ensure_demo_model, load_base
    from romevc.repo import Repo

    folder = ensure_demo_model()
    work = Path(tempfile.mkdtemp(prefix="romevc-bench-"))
    loaded = load_base(None)
    config = loaded.model.config
    d_in, d_out, layers = config.intermediate_size, config.hidden_size, config.num_hidden_layers
    edit_layer = default_layer(loaded.model)
    memit_layers = tuple(memit_defaults(loaded.model)["layers"])
    repo = Repo.init(work / "repo", None, loaded=loaded, author="bench", time=0)
    info = repo.info
    db = work / "repo" / ".romevc" / "ledger.db"
    del loaded
    print(f"base {info.base_id} ({info.architecture}), edited module {d_out}x{d_in} float32, {layers} layers, "
          f"{args.threads} torch thread(s)")

    # 1. Bytes per edit ---------------------------------------------------------------------------
    empty = _db_bytes(db)
    edits = _synthetic_edits(1_000, info, d_in, d_out, layers)
    repo.ledger.put_edits(edits)
    tips = {}  # label -> commit id
    parent = None
    for n in (1, 100, 1_000):
        c = CommitRecord.create(parents=[parent] if parent else [], edit_ids=[e.id for e in edits[:n]],
                                message=f"{n} edits", author="bench", time=n)
        repo.ledger.put_commit(c)
        tips["1 edit" if n == 1 else f"{n:,} edits at random layers"] = parent = c.id
    repo.ledger.update_ref("refs/heads/main", parent, None)
    per_edit = (_db_bytes(db) - empty) / 1_000
    # What `romevc edit` makes: every edit on the family's edit layer, so one module to rebuild.
    # And what MEMIT makes: a rank-one piece per (fact, layer) over its range of layers.
    for label, at, seed in [(f"1,000 edits at layer {edit_layer}", (edit_layer,), 2),
                            (f"1,000 over layers {memit_layers[0]}-{memit_layers[-1]} (MEMIT's range)", memit_layers, 3)]:
        pieces = _synthetic_edits(1_000, info, d_in, d_out, layers, seed=seed, at=at)
        repo.ledger.put_edits(pieces)
        c = CommitRecord.create(parents=[], edit_ids=[e.id for e in pieces], message=label, author="bench", time=0)
        repo.ledger.put_commit(c)
        tips[label] = c.id
    module = d_in * d_out * 4
    checkpoint = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    print("\n1. storage")
    print(f"   ledger bytes per edit (blobs, metadata, index, set rows): {per_edit:,.0f}")
    print(f"   edited module (one down_proj, float32):                   {module:,} ({module / per_edit:,.0f}x)")
    print(f"   full checkpoint (safetensors):                            {checkpoint:,} ({checkpoint / per_edit:,.0f}x)")
    repo.close()

    # 2. Checkout ---------------------------------------------------------------------------------
    print(f"\n2. checkout (fresh: open + load base + read and apply the edit set), {args.rounds} "
          "interleaved rounds")
    plain: list[tuple[float, float]] = []
    fresh: dict[str, list[float]] = {label: [] for label in tips}
    one, spread = tips["1 edit"], tips["1,000 edits at random layers"]
    switches: list[float] = []
    for _round in range(args.rounds):  # interleaved, so a busy moment hits every kind alike
        plain.append(_plain_load(folder))
        for label, commit in tips.items():
            gc.collect()
            t = time.perf_counter()
            with Repo.open(work / "repo") as r:
                r.model(commit)
                fresh[label].append(time.perf_counter() - t)
                if commit == spread:
                    t = time.perf_counter()
                    r.model(one)
                    r.model(spread)
                    switches.append((time.perf_counter() - t) / 2)
    alone = statistics.median(p[0] for p in plain)
    base, best = statistics.median(p[1] for p in plain), min(p[1] for p in plain)
    print(f"   plain from_pretrained of the base model: {alone:.2f} s; model and tokenizer: median {base:.2f} s, "
          f"best {best:.2f} s (runs: {', '.join(f'{p[1]:.2f}' for p in plain)})")
    # The best run is what the work costs without interference (timeit's rule); the median is
    # what a busy machine gives. Each is compared with the plain load measured the same way.
    for label, runs in fresh.items():
        seconds = statistics.median(runs)
        print(f"   commit of {label:38} median {seconds:5.2f} s = {seconds / base:.2f}x, best {min(runs):5.2f} s = "
              f"{min(runs) / best:.2f}x model and tokenizer (runs: {', '.join(f'{x:.2f}' for x in runs)})")
    print(f"   switching commits in an open repository (1 <-> 1,000 edits at random layers, no reload): "
          f"{statistics.median(switches):.2f} s")

    # 3. log and diff on a long history -----------------------------------------------------------
    print(f"\n3. history of {args.commits:,} commits (edit sets of at most {args.window})")
    hist = work / "history"
    with Repo.init(hist, None, ledger_url=None, loaded=load_base(None), author="bench", time=0) as h:
        t = time.perf_counter()
        pool = _synthetic_edits(args.commits, info, d_in, d_out, layers, seed=1)
        h.ledger.put_edits(pool)
        commits, parent, window = [], None, []
        for i, e in enumerate(pool):
            window = (window + [e.id])[-args.window:]
            c = CommitRecord.create(parents=[parent] if parent else [], edit_ids=window, message=f"edit {i}",
                                    author="bench", time=i)
            commits.append(c)
            parent = c.id
        h.ledger.put_commits(commits)
        h.ledger.update_ref("refs/heads/main", parent, None)
        h.ledger.update_ref("refs/tags/root", commits[0].id, None)
        print(f"   built in {time.perf_counter() - t:.1f} s ({_db_bytes(hist / '.romevc' / 'ledger.db') / 1e6:,.0f} MB)")
        for label, call in [
            ("log (all commits)", lambda: h.log()),
            ("log --first-parent -n 20", lambda: h.log(first_parent=True, limit=20)),
            ("diff HEAD~1 HEAD", lambda: h.diff("HEAD~1", "HEAD")),
            (f"diff HEAD~{args.window // 2} HEAD", lambda: h.diff(f"HEAD~{args.window // 2}", "HEAD")),
            ("diff root HEAD (a tag)", lambda: h.diff("root", "HEAD")),
            (f"diff HEAD~{args.commits - 1} HEAD", lambda: h.diff(f"HEAD~{args.commits - 1}", "HEAD")),
            (f"  of which resolving HEAD~{args.commits - 1}", lambda: [h.ledger.resolve(f"HEAD~{args.commits - 1}")]),
        ]:
            t = time.perf_counter()
            result = call()
            seconds = time.perf_counter() - t
            size = len(result) if isinstance(result, list) else f"+{len(result.added)} -{len(result.removed)}"
            print(f"   {label:28} {seconds:7.3f} s  ({size})")
    if args.keep:
        print(f"\n(work folder: {work})")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
