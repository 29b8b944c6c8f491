"""Causal tracing (Meng et al. 2022, section 2): which hidden states carry a fact.

The prompt runs three ways: clean; with the subject's token embeddings corrupted by
Gaussian noise; and corrupted but with one clean state put back. A state whose
restoration brings p(answer) back mediates the fact. As in the paper, three kinds of
state are restored at one token: (a) the residual stream after one layer, (b) the MLP
outputs and (c) the attention outputs of a window of layers centred on a layer.

Noise: ν·σ with ν = 3 as in the paper. The paper measures σ over the embeddings of the
subjects of a corpus; here σ is the std of the token-embedding *outputs* over the whole
vocabulary, which is the std of the embedding matrix for a plain ``nn.Embedding`` (Gemma
scales its embeddings, and the scaled ones are what the first block sees). It needs no
corpus and lands close to the paper's value.

Speed: a restoration leaves every layer below its first restored layer exactly as in
the corrupted run, so the corrupted run's layer inputs are cached and each batch runs
only from that layer up (``forward.run_from_layer``). All noise samples of all tokens
restored at one (kind, layer) share a batch. Tokens before the subject are never
corrupted, so in a causal model restoring them changes nothing: their cells are
p(corrupted) without a forward pass.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator, Sequence

import torch

from romevc import paths
from romevc.architectures import Architecture, architecture_for, num_layers
from romevc.editing import forward
from romevc.editing.request import subject_last_token_index
from romevc.editing.rome import target_token_ids
from romevc.errors import RomevcError

KINDS = ("hidden", "mlp", "attention")  # what is restored: residual stream, MLP outputs, attention outputs
KIND_TITLES = {"hidden": "hidden state (residual stream)", "mlp": "MLP outputs", "attention": "attention outputs"}
FORMAT = "romevc-trace-1"
PRECISIONS = ("float32", "bfloat16")


class TraceError(RomevcError):
    """A trace that cannot run as asked: subject not in the prompt, bad settings, missing extra."""


@dataclass(frozen=True)
class TraceSettings:
    """How a trace corrupts and restores; the defaults are the paper's."""

    samples: int = field(default=10, metadata={"help": "noise draws, run as one batch (paper: 10)"})
    noise: float = field(default=3.0, metadata={"help": "noise std as a multiple of the embedding std (paper: 3)"})
    seed: int = field(default=0, metadata={"help": "seed of the torch.Generator that draws the noise"})
    window: int = field(default=10, metadata={"help": "layers of MLP/attention outputs restored together (paper: 10)"})
    max_rows: int = field(default=256, metadata={"help": "rows per forward pass; lower it when memory is short"})
    precision: str = field(default="float32", metadata={
        "help": "float32, or bfloat16: matrix products in bfloat16 under autocast while the residual stream, "
                "norms and logits stay float32 (several times faster on CPUs with AMX or on GPUs)"})

    def __post_init__(self) -> None:
        for name in ("samples", "window", "max_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TraceError(f"`{name}` must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TraceError(f"`seed` must be an integer, got {self.seed!r}")
        if not isinstance(self.noise, (int, float)) or not math.isfinite(self.noise) or self.noise <= 0:
            raise TraceError(f"`noise` must be a positive number, got {self.noise!r}")
        if self.precision not in PRECISIONS:
            raise TraceError(f"`precision` must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def identity(self) -> dict:
        """Everything that changes the numbers (``max_rows`` only changes the batching)."""
        identity = {"samples": self.samples, "noise": float(self.noise), "seed": self.seed, "window": self.window}
        if self.precision != "float32":  # traces saved before the option existed were float32
            identity["precision"] = self.precision
        return identity


# -- the prompt and its subject ------------------------------------------------------------

@dataclass(frozen=True)
class SubjectPrompt:
    text: str
    ids: list[int]
    subject: tuple[int, int]  # token range [first, last + 1) of the subject


def subject_slot(prompt: str, subject: str) -> str:
    """``prompt`` with ``{}`` where the subject is (the first occurrence, if it is spelled out).

    Needs no tokenizer, so the CLI checks it before spending time loading a model."""
    subject = subject.strip() if isinstance(subject, str) else ""
    if not subject or not isinstance(prompt, str) or not prompt.strip():
        raise TraceError("give a non-empty prompt and subject")
    if prompt.count("{}") == 1:
        return prompt
    if "{}" in prompt:
        raise TraceError(f"the prompt {prompt!r} holds more than one '{{}}'")
    if subject not in prompt:
        raise TraceError(f"the subject {subject!r} does not occur in the prompt {prompt!r}; "
                         "give it exactly as written there")
    return prompt.replace(subject, "{}", 1)


def locate_subject(tokenizer, prompt: str, subject: str) -> SubjectPrompt:
    """Token ids of the prompt and the subject's token range.

    The last subject token is found as ROME finds it (``subject_last_token_index``). The
    first is where the tokens of the text before the subject stop agreeing with the full
    prompt's, which also holds when the text before merges into the subject's first token.
    """
    slot = subject_slot(prompt, subject)
    subject = subject.strip()
    before, _, after = slot.partition("{}")
    text = before + subject + after
    ids = tokenizer(text)["input_ids"]
    last = subject_last_token_index(tokenizer, slot, subject)
    ids_before = tokenizer(before)["input_ids"]  # for a subject at the start: just a BOS, if any
    first = 0
    while first < min(len(ids_before), len(ids)) and ids_before[first] == ids[first]:
        first += 1
    return SubjectPrompt(text, ids, (min(first, last), last + 1))


# -- noise ---------------------------------------------------------------------------------

@torch.no_grad()
def embedding_std(model: torch.nn.Module, arch: Architecture | None = None, chunk: int = 4096) -> float:
    """Std of the token-embedding outputs over the whole vocabulary, accumulated in float64."""
    arch = arch or architecture_for(model)
    embed = model.get_submodule(arch.embed)
    device = embed.weight.device
    total, squares, count = 0.0, 0.0, 0
    for start in range(0, embed.weight.shape[0], chunk):
        ids = torch.arange(start, min(start + chunk, embed.weight.shape[0]), device=device)
        values = embed(ids).double()  # (chunk, d_model)
        total += float(values.sum())
        squares += float((values * values).sum())
        count += values.numel()
    mean = total / count
    return math.sqrt(max(squares / count - mean * mean, 0.0) * count / max(count - 1, 1))


def draw_noise(settings: TraceSettings, n_tokens: int, d_model: int, std: float) -> torch.Tensor:
    """(samples, n_tokens, d_model) Gaussian noise of std ``std``, from a generator seeded by the settings."""
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    return torch.randn(settings.samples, n_tokens, d_model, generator=generator, dtype=torch.float32) * std


# -- hooks ---------------------------------------------------------------------------------

def _main_output(output) -> torch.Tensor:
    """A block returns a tensor or a tuple whose first element is the hidden states."""
    return output[0] if isinstance(output, tuple) else output


def _replace_at(output, rows: torch.Tensor, tokens: torch.Tensor, values: torch.Tensor):
    """``output`` with its hidden states at (rows[i], tokens[i]) set to values[i]."""
    patched = _main_output(output).clone()
    patched[rows, tokens] = values.to(patched.device, patched.dtype)
    return (patched, *output[1:]) if isinstance(output, tuple) else patched


@contextlib.contextmanager
def _hooks(model: torch.nn.Module, hooks: Sequence[tuple[str, object]], *, pre: bool = False) -> Iterator[None]:
    handles = []
    try:
        for name, hook in hooks:
            module = model.get_submodule(name)
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True) if pre
                           else module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def module_name(arch: Architecture, kind: str, layer: int) -> str:
    prefix = arch.layer_prefix(layer)
    return {"hidden": prefix, "mlp": f"{prefix}.{arch.mlp}", "attention": f"{prefix}.{arch.attention}"}[kind]


def window_layers(layer: int, depth: int, window: int) -> list[int]:
    """The ``window`` layers centred on ``layer``, clipped at both ends (the paper's code: l−w/2 .. l+w/2−1)."""
    return list(range(max(0, layer - window // 2), min(depth, layer - (-window // 2))))


@contextlib.contextmanager
def _precision(model: torch.nn.Module, arch: Architecture, precision: str) -> Iterator[None]:
    """Run the layers' matrix products in ``precision``; the logits are always float32.

    Under bfloat16 autocast the linear layers take bfloat16 inputs (float32 accumulation)
    while residual additions and norms stay float32; the head is recomputed in float32
    from its float32 input, so p(answer) is not rounded to bfloat16's 3 digits.
    """
    if precision == "float32":
        yield
        return
    device_type = next(model.parameters()).device.type

    def float_head(module, inputs, _output):
        with torch.autocast(device_type, enabled=False):
            return module.forward(inputs[0].float())

    with torch.autocast(device_type, dtype=torch.bfloat16), _hooks(model, [(arch.head, float_head)]):
        yield


# -- the three runs ------------------------------------------------------------------------

def _next_token_probs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(batch, vocab) next-token probabilities after the last position, in float32."""
    return model(input_ids=ids, use_cache=False).logits[:, -1].float().softmax(-1)


def _clean_states(model, arch, ids: torch.Tensor, depth: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every restorable state of the clean run, name → (seq, d_model), and its next-token probabilities."""
    states: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_module, _inputs, output):
            states[name] = _main_output(output)[0].detach()
        return hook

    names = [module_name(arch, kind, layer) for kind in KINDS for layer in range(depth)]
    with _hooks(model, [(name, keep(name)) for name in names]):
        probs = _next_token_probs(model, ids)[0]
    return states, probs


@contextlib.contextmanager
def corrupting(model: torch.nn.Module, arch: Architecture, subject: tuple[int, int], noise: torch.Tensor):
    """Add ``noise`` (samples, n_subject, d_model) to the token embeddings of the subject, row i getting noise[i]."""
    first, end = subject

    def hook(_module, _inputs, output):
        output = output.clone()
        output[:, first:end] += noise.to(output.device, output.dtype)
        return output

    with _hooks(model, [(arch.embed, hook)]):
        yield


def _corrupted_run(model, arch, ids, subject, noise, depth) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The input of every layer in the corrupted run, each (samples, seq, d_model), and its probabilities."""
    inputs: list[torch.Tensor | None] = [None] * depth

    def keep(layer):
        def hook(_module, args, kwargs):
            inputs[layer] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    batch = ids.expand(noise.shape[0], -1)
    with corrupting(model, arch, subject, noise), \
            _hooks(model, [(arch.layer_prefix(layer), keep(layer)) for layer in range(depth)], pre=True):
        probs = _next_token_probs(model, batch)
    return inputs, probs


def _restored_probability(model, arch, start: int, layer_input: torch.Tensor, names: Sequence[str],
                          clean: dict[str, torch.Tensor], tokens: torch.Tensor, answer_id: int) -> torch.Tensor:
    """p(answer) per token in ``tokens`` (k,), mean over noise samples, with the clean states of
    ``names`` put back at that token. The run starts at layer ``start`` from the corrupted inputs."""
    samples, seq, _ = layer_input.shape
    k = tokens.shape[0]
    hidden = layer_input.repeat(k, 1, 1)  # (k·samples, seq, d): row r restores token tokens[r // samples]
    rows = torch.arange(k * samples, device=hidden.device)
    row_tokens = tokens.to(hidden.device).repeat_interleave(samples)  # (k·samples,)

    def put_back(name):
        values = clean[name][row_tokens]  # (k·samples, d_model)
        return lambda _module, _inputs, output: _replace_at(output, rows, row_tokens, values)

    mask = torch.ones(k * samples, seq, dtype=torch.long, device=hidden.device)
    with _hooks(model, [(name, put_back(name)) for name in names]):
        final = forward.run_from_layer(model, arch, start, hidden, mask)
    last = torch.full((k * samples,), seq - 1, device=hidden.device)
    probs = forward.logits_at(model, arch, final, rows, last).softmax(-1)[:, answer_id]  # (k·samples,)
    return probs.view(k, samples).mean(1).cpu()


# -- the result ----------------------------------------------------------------------------

@dataclass
class TraceResult:
    """p(answer) with each state restored, per kind a (tokens, layers) grid, and the two endpoints."""

    text: str
    subject: str
    tokens: list[str]
    subject_range: tuple[int, int]  # [first, last + 1)
    answer: str
    answer_id: int
    top_id: int  # the clean model's top-1 next token (the answer unless a target was given)
    top_token: str
    p_clean: float
    p_corrupt: float
    noise_std: float  # absolute std of the noise: settings.noise × embedding std
    settings: TraceSettings
    grids: dict[str, torch.Tensor]  # kind → (tokens, layers) p(answer)

    @property
    def layers(self) -> int:
        return self.grids["hidden"].shape[1]

    def peak(self, kind: str, token: int | None = None) -> tuple[int, int, float]:
        """(token, layer, p) of the strongest restoration of ``kind`` (at ``token`` if given)."""
        grid = self.grids[kind] if token is None else self.grids[kind][token : token + 1]
        flat = int(grid.argmax())
        t, layer = divmod(flat, grid.shape[1])
        return (t if token is None else token), layer, float(grid[t, layer])

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("grids", "settings")}
        data.update(format=FORMAT, subject_range=list(self.subject_range), settings=self.settings.identity(),
                    grids={kind: grid.tolist() for kind, grid in self.grids.items()})
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TraceResult":
        plain = {k: v for k, v in data.items() if k not in ("format", "grids", "settings")}
        plain["subject_range"] = tuple(plain["subject_range"])
        return cls(**plain, settings=TraceSettings(**data["settings"]),
                   grids={kind: torch.tensor(grid, dtype=torch.float32) for kind, grid in data["grids"].items()})

    def save(self, out_dir: str | Path) -> list[Path]:
        """``trace.json`` (everything) and ``trace.safetensors`` (the grids), each written atomically."""
        from safetensors.torch import save

        out = Path(out_dir)
        json_path, tensors_path = out / "trace.json", out / "trace.safetensors"
        paths.atomic_write_text(json_path, json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False))
        metadata = {"format": FORMAT, "text": self.text, "subject": self.subject, "answer": self.answer,
                    "p_clean": repr(self.p_clean), "p_corrupt": repr(self.p_corrupt)}
        grids = {kind: grid.float().contiguous() for kind, grid in self.grids.items()}
        paths.atomic_write_bytes(tensors_path, save(grids, metadata=metadata))
        return [json_path, tensors_path]


@torch.no_grad()
def trace(model: torch.nn.Module, tokenizer, prompt: str, subject: str, *, target: str | None = None,
          settings: TraceSettings | None = None, progress: bool = False) -> TraceResult:
    """Causal trace of ``prompt`` (holding ``subject``, or ``{}`` in its place).

    The answer is the clean model's top-1 next token, or the first token of ``target``.
    The model is unchanged on return: every hook is removed, no weight is touched.
    """
    from tqdm.auto import tqdm

    settings = settings or TraceSettings()
    arch = architecture_for(model)
    depth = num_layers(model)
    located = locate_subject(tokenizer, prompt, subject)
    device = next(model.parameters()).device
    ids = torch.tensor([located.ids], device=device)  # (1, seq)

    seq = ids.shape[1]
    first, end = located.subject

    with _precision(model, arch, settings.precision):
        clean, clean_probs = _clean_states(model, arch, ids, depth)
        top_id = int(clean_probs.argmax())
        answer_id = top_id if target is None else target_token_ids(tokenizer, located.text, target)[0]
        std = settings.noise * embedding_std(model, arch)
        d_model = clean[arch.layer_prefix(0)].shape[-1]
        noise = draw_noise(settings, end - first, d_model, std)
        layer_inputs, corrupt_probs = _corrupted_run(model, arch, ids, located.subject, noise, depth)
        p_corrupt = float(corrupt_probs[:, answer_id].mean())

        grids = {kind: torch.full((seq, depth), p_corrupt) for kind in KINDS}  # tokens before the subject stay here
        traced = torch.arange(first, seq)
        per_batch = max(1, settings.max_rows // settings.samples)
        bar = tqdm(total=len(KINDS) * depth, desc="causal trace", unit="layer", file=sys.stderr,
                   disable=not progress, leave=False)
        for kind in KINDS:
            for layer in range(depth):
                restored = [layer] if kind == "hidden" else window_layers(layer, depth, settings.window)
                names = [module_name(arch, kind, each) for each in restored]
                for chunk in traced.split(per_batch):
                    grids[kind][chunk, layer] = _restored_probability(
                        model, arch, restored[0], layer_inputs[restored[0]], names, clean, chunk, answer_id)
                bar.update()
        bar.close()
    return TraceResult(
        text=located.text, subject=subject.strip(), tokens=[tokenizer.decode([i]) for i in located.ids],
        subject_range=located.subject, answer=tokenizer.decode([answer_id]), answer_id=answer_id,
        top_id=top_id, top_token=tokenizer.decode([top_id]), p_clean=float(clean_probs[answer_id]),
        p_corrupt=p_corrupt, noise_std=std, settings=settings, grids=grids,
    )
