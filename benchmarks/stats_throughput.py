"""Throughput of second-moment statistics on the demo model: one layer, all layers in one pass,
and all layers one pass each (what a per-layer cache fill would cost).

    python benchmarks/stats_throughput.py --tokens 4096

Prints tokens/s and the ratio (one pass over all layers) / (one pass per layer).
"""
from __future__ import annotations

import argparse
import time

import torch

from romevc.architectures import default_layer, num_layers
from romevc.corpus import open_corpus
from romevc.editing.stats import compute_second_moments
from romevc.model import load_base


def timed(model, tokenizer, layers, corpus, n_tokens) -> float:
    started = time.perf_counter()
    compute_second_moments(model, tokenizer, layers, corpus, n_tokens=n_tokens, progress=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--base", default=None)
    args = parser.parse_args()
    loaded = load_base(args.base)
    model, tokenizer = loaded.model, loaded.tokenizer
    corpus = open_corpus(None)
    depth, edit_layer = num_layers(model), default_layer(model)
    timed(model, tokenizer, [0], corpus, 512)  # warm-up: allocator, kernels

    one = timed(model, tokenizer, [edit_layer], corpus, args.tokens)
    deepest = timed(model, tokenizer, [depth - 1], corpus, args.tokens)
    together = timed(model, tokenizer, list(range(depth)), corpus, args.tokens)
    separate = sum(timed(model, tokenizer, [layer], corpus, args.tokens) for layer in range(depth))
    n = args.tokens
    print(f"base {loaded.spec}: {depth} layers, {n} tokens, {torch.get_num_threads()} threads")
    print(f"one layer (layer {edit_layer}, stops there):   {n / one:8.0f} tokens/s  ({one:.1f} s)")
    print(f"one layer (layer {depth - 1}, full depth):     {n / deepest:8.0f} tokens/s  ({deepest:.1f} s)")
    print(f"all {depth} layers in one pass:         {n / together:8.0f} tokens/s  ({together:.1f} s)")
    print(f"all {depth} layers, one pass each:      {n / separate:8.0f} tokens/s  ({separate:.1f} s)")
    print(f"ratio one pass / one pass per layer: {together / separate:.3f}")


if __name__ == "__main__":
    main()
