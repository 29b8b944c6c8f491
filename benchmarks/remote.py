"""Bytes a push uploads: an edit set of 1, 10 and 100 edits vs the full checkpoint of the same model.

    python benchmarks/remote.py

The model is the demo model (SmolLM2-135M: 30 layers, down_proj 1536 → 576). Edits are
synthetic rank-one deltas of those shapes at random layers, one commit each (what a push
uploads depends on their bytes, not their meaning). Each edit set is pushed for real with
huggingface_hub's client to the Hub-compatible test server (``tests/hub_server.py``) on
127.0.0.1, which counts the request bodies it receives; the published files are counted
too. The baseline, measured in the same run, is what ``push --materialize`` uploads: the
checkpoint's files (model.safetensors, config, tokenizer), read from the converted demo
model when it is on disk, else estimated from its parameter count in float32.

Also printed: a push of one more edit onto a remote that already holds 99. Format 1
republishes the whole edit set of the branch in every push (one self-contained revision
per push), so that push costs as much as the 100-edit set, still a small share of a
checkpoint.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# SmolLM2-135M (the demo model): used when the converted folder is not on disk.
DEMO = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "parameters": 134_515_008}


def checkpoint_bytes() -> tuple[int, str, dict]:
    """(bytes of the full checkpoint's files, where the number comes from, the model's config)."""
    import json

    from romevc.model import demo_model_dir

    folder = demo_model_dir()
    if (folder / "model.safetensors").is_file():
        config = json.loads((folder / "config.json").read_text())
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name != "romevc-source.json")
        return size, f"files of {folder}", config
    return DEMO["parameters"] * 4, "estimated: 134.5M float32 parameters (demo model not converted)", DEMO


def synthetic_history(url: str, n: int, config: dict):
    """A bare ledger (no model) on the demo model's shapes with ``n`` edits, one commit each."""
    from romevc.ledger import CommitRecord, EditRecord, Ledger, RepoInfo

    info = RepoInfo(base_id="HuggingFaceTB/SmolLM2-135M-Instruct", revision=None, architecture="llama",
                    dtype="float32", base_fingerprint="b" * 64, module_template="model.layers.{}.mlp.down_proj",
                    layout="out_in")
    ledger = Ledger.create(url, info)
    rng = np.random.default_rng(0)
    d_in, d_out, layers = config["intermediate_size"], config["hidden_size"], config["num_hidden_layers"]
    edits, parent = [], None
    for i in range(n):
        layer = int(rng.integers(layers))
        edits.append(EditRecord.create(
            request={"prompt": "{} is located in the city of", "subject": f"Landmark {i}", "target_new": "Rome",
                     "target_true": "Paris"},
            method="r-rome", hparams={"layer": layer}, seed=i, templates=["{}", "The following is true. {}"],
            layer=layer, module=info.module_template.format(layer), layout=info.layout,
            u=(rng.standard_normal(d_in) / d_in).astype("<f4").tobytes(),  # (d_in,)
            v=(rng.standard_normal(d_out) * 1e-3).astype("<f4").tobytes(),  # (d_out,)
            stats_id="s" * 64, weights_fingerprint=None, author="bench <bench@example.org>", time=i,
        ))
        commit = CommitRecord.create(parents=[parent] if parent else [], edit_ids=[e.id for e in edits],
                                     message=f"Landmark {i} → Rome", author="bench <bench@example.org>", time=i)
        ledger.put_edits([edits[-1]])
        ledger.commit_on_branch("main", commit)
        parent = commit.id
    return ledger


def push_once(hub, ledger, repo_id: str) -> tuple[int, int, float]:
    """(file bytes, HTTP request-body bytes, seconds) of one push of ``main``."""
    from romevc.remotes import sync

    repo = SimpleNamespace(ledger=ledger)  # push reads only the ledger
    if not [r for r in ledger.list_remotes() if r.name == "hub"]:
        ledger.add_remote("hub", f"hf://{repo_id}")
    before = hub.state.bytes_in
    start = time.perf_counter()
    result = sync.push(repo, "hub", endpoint=hub.url)
    return result.bytes, hub.state.bytes_in - before, time.perf_counter() - start


def main() -> None:
    from huggingface_hub import constants
    from huggingface_hub.utils import disable_progress_bars

    from hub_server import HubServer

    constants.HF_HUB_OFFLINE = False  # the server is on 127.0.0.1
    disable_progress_bars()
    full, source, config = checkpoint_bytes()
    print(f"full checkpoint push (push --materialize): {full:,} bytes ({source})")
    header = ("edits", "files pushed", "HTTP bodies", "of checkpoint", "bytes/edit", "push s")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (6, 14, 14, 14, 11, 7))))
    with HubServer() as hub, tempfile.TemporaryDirectory() as tmp:
        for n in (1, 10, 100):
            ledger = synthetic_history(f"sqlite:///{tmp}/ledger-{n}.db", n, config)
            files, wire, seconds = push_once(hub, ledger, f"bench/edits-{n}")
            print(f"{n:>6} {files:>14,} {wire:>14,} {files / full:>13.4%} {files // n:>11,} {seconds:>7.2f}")
            ledger.close()
        # One more edit onto a remote holding 99: what an incremental push costs in format 1.
        ledger = synthetic_history(f"sqlite:///{tmp}/ledger-inc.db", 100, config)
        tip = ledger.resolve("main")
        previous = ledger.get_commit(tip).parents[0]
        ledger.update_ref("refs/heads/main", previous, tip)  # rewind to 99 edits and push them
        push_once(hub, ledger, "bench/incremental")
        ledger.update_ref("refs/heads/main", tip, previous)  # then the 100th
        files, wire, seconds = push_once(hub, ledger, "bench/incremental")
        print(f"the 100th edit pushed onto 99: {files:,} bytes of files, {wire:,} HTTP bytes "
              f"({files / full:.4%} of the checkpoint; the whole edit set is republished)")
        ledger.close()


if __name__ == "__main__":
    main()
