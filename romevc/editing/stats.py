"""Second-moment statistics C = E[k kᵀ] of an edited module's input, computed once and cached.

ROME solves for the update direction u = C⁻¹k, so C must describe the keys the module
sees on ordinary text. The cache key names every input that changes the value: model
fingerprint, module, corpus id, token count and chunk length — unlike the reference
code's cache keyed by model name and layer only. Several layers share one forward pass,
which stops after the deepest layer that is needed.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors.torch import save
from tqdm.auto import tqdm

from romevc import paths
from romevc.architectures import architecture_for, as_out_in, check_layer, edited_weight
from romevc.corpus import Corpus, open_corpus
from romevc.editing.delta import base_fingerprint, base_weights
from romevc.editing.forward import StopForward, pad_rows
from romevc.errors import CorpusError, SafetensorsFormatError, StatsError
from romevc.safe_tensors import load as load_checked

log = logging.getLogger(__name__)

DEFAULT_TOKENS = 100_000  # enough for a full-rank C at d_ff = 1536; ~1 min on 2 CPU cores
DEFAULT_CHUNK = 128  # tokens per text chunk: long enough for real context, short for speed
BATCH_TOKENS = 4096  # tokens per forward pass
FORMAT = "romevc-stats-v1"


@dataclass(frozen=True)
class StatsKey:
    fingerprint: str
    module: str
    corpus_id: str
    n_tokens: int
    chunk: int = DEFAULT_CHUNK

    @property
    def id(self) -> str:
        text = json.dumps([FORMAT, self.fingerprint, self.module, self.corpus_id, self.n_tokens, self.chunk])
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class SecondMoment:
    """C = Σ k kᵀ / n for one module; solves C x = k by a cached Cholesky factor."""

    key: StatsKey
    mom2: torch.Tensor  # (d_in, d_in) float64
    count: int
    _factor: torch.Tensor | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.key.id

    def factor(self) -> torch.Tensor:
        """Lower Cholesky factor of C (float64), with a tiny ridge only if C is singular."""
        if self._factor is None:
            c = self.mom2
            factor, info = torch.linalg.cholesky_ex(c)
            if info.item() != 0:
                ridge = 1e-6 * c.diagonal().mean()
                log.warning("C is not positive definite; adding a ridge of %.3g", ridge.item())
                factor = torch.linalg.cholesky(c + ridge * torch.eye(c.shape[0], dtype=c.dtype))
            self._factor = factor
        return self._factor

    def solve(self, k: torch.Tensor) -> torch.Tensor:
        """C⁻¹ k for k of shape (d_in,) or (n, d_in), in float64 — never an explicit inverse."""
        rhs = k.to(torch.float64).reshape(-1, self.mom2.shape[0]).T  # (d_in, n)
        return torch.cholesky_solve(rhs, self.factor()).T.reshape(k.shape)


def _token_chunks(corpus: Corpus, tokenizer, chunk: int) -> Iterator[list[int]]:
    """Token id chunks of at most ``chunk`` tokens (documents split, never joined)."""
    for text in corpus.documents():
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        for start in range(0, len(ids), chunk):
            piece = ids[start : start + chunk]
            if len(piece) >= 8:  # a few tokens carry no context worth measuring
                yield piece


def _batches(chunks: Iterator[list[int]], n_tokens: int, pad_id: int):
    """(input_ids, attention_mask) batches of about BATCH_TOKENS until n_tokens are taken."""
    taken, batch = 0, []
    for piece in chunks:
        piece = piece[: n_tokens - taken]
        batch.append(piece)
        taken += len(piece)
        if sum(map(len, batch)) >= BATCH_TOKENS or taken >= n_tokens:
            yield pad_rows(batch, pad_id)
            batch = []
        if taken >= n_tokens:
            return
    if batch:
        yield pad_rows(batch, pad_id)


@torch.no_grad()
def compute_second_moments(
    model: torch.nn.Module,
    tokenizer,
    layers: Sequence[int],
    corpus: Corpus,
    n_tokens: int = DEFAULT_TOKENS,
    chunk: int = DEFAULT_CHUNK,
    progress: bool = True,
) -> dict[int, SecondMoment]:
    """E[k kᵀ] at the edited module's input of each layer, in one pass over the corpus."""
    arch = architecture_for(model)
    for layer in layers:
        check_layer(model, layer)
    fingerprint = base_fingerprint(model)
    device = next(model.parameters()).device
    config = model.config
    max_positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    window = min(chunk, max_positions) if max_positions else chunk  # small models have short contexts
    sums: dict[int, torch.Tensor] = {}
    deepest = max(layers)
    mask_flat: list[torch.Tensor] = []  # the current batch's real-token mask, for the hooks

    def hook_for(layer: int):
        def hook(_module, inputs):
            keys = inputs[0].reshape(-1, inputs[0].shape[-1])[mask_flat[0]].float()  # (n, d_in)
            partial = (keys.T @ keys).double().cpu()  # float32 product per batch, float64 sum
            sums[layer] = partial if layer not in sums else sums[layer] + partial
            if layer == deepest:
                raise StopForward  # the layers above cannot change the statistics
        return hook

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    handles = [model.get_submodule(arch.edited_module_name(l)).register_forward_pre_hook(hook_for(l))
               for l in sorted(set(layers))]
    count = 0
    try:
        with base_weights(model), tqdm(total=n_tokens, desc="second moments", unit="tok",
                                       disable=not progress, leave=False) as bar:
            for ids, mask in _batches(_token_chunks(corpus, tokenizer, window), n_tokens, pad_id):
                mask_flat[:] = [mask.reshape(-1).bool().to(device)]
                try:
                    model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                except StopForward:
                    pass
                count += int(mask.sum())
                bar.update(int(mask.sum()))
    finally:
        for handle in handles:
            handle.remove()
    if count == 0:
        raise CorpusError(f"the corpus {corpus.id!r} yielded no text to measure")
    return {
        layer: SecondMoment(StatsKey(fingerprint, arch.edited_module_name(layer), corpus.id, n_tokens, chunk),
                            sums[layer] / count, count)
        for layer in sorted(set(layers))
    }


def _d_in(model: torch.nn.Module, layer: int) -> int:
    """The edited module's input width: the side of its C."""
    return as_out_in(edited_weight(model, layer), architecture_for(model).layout).shape[1]


class StatsCache:
    """Second moments on disk (safetensors) and in memory, keyed by ``StatsKey``.

    An explicit object, passed to whoever needs statistics: no module-level cache.
    """

    def __init__(self, root: Path | None = None, corpus: str | None = None,
                 n_tokens: int = DEFAULT_TOKENS, chunk: int = DEFAULT_CHUNK, progress: bool = True):
        self.root = Path(root) if root else paths.cache_dir() / "stats"
        self.corpus = open_corpus(corpus)
        self.n_tokens = n_tokens
        self.chunk = chunk
        self.progress = progress
        self._memory: dict[str, SecondMoment] = {}
        if n_tokens < 1:
            raise StatsError(f"`n_tokens` must be positive, got {n_tokens}")

    def key(self, model: torch.nn.Module, layer: int) -> StatsKey:
        module = architecture_for(model).edited_module_name(layer)
        return StatsKey(base_fingerprint(model), module, self.corpus.id, self.n_tokens, self.chunk)

    def path(self, key: StatsKey) -> Path:
        return self.root / f"{key.id}.safetensors"

    def get(self, model: torch.nn.Module, tokenizer, layer: int) -> SecondMoment:
        return self.get_many(model, tokenizer, [layer])[layer]

    def get_many(self, model: torch.nn.Module, tokenizer, layers: Sequence[int]) -> dict[int, SecondMoment]:
        """Cached moments for ``layers``; the missing ones are computed in one pass."""
        for layer in layers:
            check_layer(model, layer)
        found: dict[int, SecondMoment] = {}
        for layer in layers:
            key = self.key(model, layer)
            moment = self._memory.get(key.id) or self._load(key, _d_in(model, layer))
            if moment is not None:
                self._memory[key.id] = found[layer] = moment
        missing = [layer for layer in layers if layer not in found]
        if missing:
            computed = compute_second_moments(model, tokenizer, missing, self.corpus, self.n_tokens,
                                              self.chunk, self.progress)
            for layer, moment in computed.items():
                self._save(moment)
                self._memory[moment.id] = found[layer] = moment
        return found

    def _load(self, key: StatsKey, d_in: int) -> SecondMoment | None:
        """The cached moment of ``key``, or None (recompute) for a missing, unreadable or odd file.

        The file's header is checked before a byte of tensor data is read
        (:mod:`romevc.safe_tensors`), and the tensors must be a (d_in, d_in) float64 C and
        a positive count: a cache file is never trusted blindly.
        """
        path = self.path(key)
        if not path.exists():
            return None
        try:
            header, tensors = load_checked(path, "pt")
            stored_key = json.loads(header.metadata.get("key", "null"))
        except (SafetensorsFormatError, ValueError, RecursionError) as exc:
            log.warning("ignoring unreadable statistics file %s (%s); recomputing", path, exc)
            return None
        if stored_key != list(key.__dict__.values()) or set(tensors) != {"mom2", "count"}:
            log.warning("statistics file %s does not match its key; recomputing", path)
            return None
        mom2, count = tensors["mom2"], tensors["count"]
        if (mom2.dtype != torch.float64 or tuple(mom2.shape) != (d_in, d_in) or count.dtype != torch.int64
                or count.numel() != 1 or count.item() < 1 or not torch.isfinite(mom2).all()):
            log.warning("statistics file %s holds C %s%s and count %s%s, not a finite (%d, %d) float64 C and one "
                        "positive count; recomputing", path, mom2.dtype, list(mom2.shape), count.dtype, list(count.shape),
                        d_in, d_in)
            return None
        return SecondMoment(key, mom2, int(count.item()))

    def _save(self, moment: SecondMoment) -> None:
        tensors = {"mom2": moment.mom2.contiguous(), "count": torch.tensor([moment.count], dtype=torch.int64)}
        metadata = {"format": FORMAT, "key": json.dumps(list(moment.key.__dict__.values()))}
        paths.atomic_write_bytes(self.path(moment.key), save(tensors, metadata=metadata))
