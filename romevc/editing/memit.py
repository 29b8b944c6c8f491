"""MEMIT: many facts at once, spread over a range of layers (Meng et al. 2023).

For n requests MEMIT first finds, for each subject, the hidden state z_i it wants in the
residual stream after the range's last layer L: z_i = h_i + δ_i, δ_i optimised exactly as
ROME optimises its value (NLL of the new object + KL + weight decay, norm clamp), only
injected into the block's output instead of one MLP's. Then, layer by layer from the
bottom, it asks that layer's MLP output projection W_l for its share of what is missing:

    R_l = (Z − H_L) / (layers left, this one included)          (d_out × n)
    ΔW_l = R_l K_lᵀ (λ·C_l + K_l K_lᵀ)⁻¹                         (d_out × d_in, rank ≤ n)

K_l holds the keys (the module's input at each subject's last token), C_l = E[k kᵀ] over
ordinary text and λ = ``mom2_update_weight``; H_L and K_l are measured on the model that
already carries the updates of the layers below, so each layer corrects what the ones
before left over. The inverse is never formed: (λC + KKᵀ)⁻¹K = C⁻¹K (λI + KᵀC⁻¹K)⁻¹, so
C's cached Cholesky factor and an n × n solve suffice. For n = 1 this is ROME's
direction C⁻¹k shrunk by s / (λ + s), s = kᵀC⁻¹k (Sherman–Morrison).

Keys and hidden states are averaged over the context templates, as ``r-rome`` averages
its key; the reference code reads the hidden state of the bare prompt only.

Cost: one ROME-sized δ optimisation per request (the bulk: about 30 s each on the demo
model, one CPU thread) plus one forward pass per layer for the whole batch. The demo
model's range and λ were measured; the numbers sit next to ``SMOLLM2_135M_LAYERS``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from romevc.architectures import Architecture, architecture_for, check_layer
from romevc.editing import delta as deltas
from romevc.editing import forward
from romevc.editing.delta import Delta
from romevc.editing.joint_values import optimise_values_jointly
from romevc.editing.memit_hparams import MemitHyperParams, memit_defaults
from romevc.editing.request import EditRequest
from romevc.editing.result import MemitResult
from romevc.editing.rome import EditPrompts, build_prompts, optimise_value
from romevc.editing.stats import SecondMoment, StatsCache
from romevc.editing.templates import generate_templates
from romevc.errors import EditComputationError, EditRequestError

log = logging.getLogger(__name__)


# -- prompts and captures ----------------------------------------------------------------

@dataclass(frozen=True)
class BatchPrompts:
    """Each request's ROME prompts, and all their template rows in one batch (request-major)."""

    per_request: tuple[EditPrompts, ...]
    rows: forward.PromptBatch  # n_requests · n_templates rows; the KL rows are left out
    n_templates: int


def batch_prompts(tokenizer, requests: Sequence[EditRequest], templates: Sequence[str],
                  kl_prompt: str) -> BatchPrompts:
    per_request = tuple(build_prompts(tokenizer, r, templates, kl_prompt) for r in requests)
    rows, positions = [], []
    for prompts in per_request:
        batch = prompts.batch
        for i in range(prompts.n_rewrite):
            rows.append(batch.input_ids[i, : int(batch.attention_mask[i].sum())].tolist())  # right padding off
            positions.append(int(batch.subject_positions[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return BatchPrompts(per_request, forward.pad_batch(rows, positions, pad_id), len(templates))


@torch.no_grad()
def keys_and_hidden(model: torch.nn.Module, arch: Architecture, key_layer: int, hidden_layer: int,
                    prompts: BatchPrompts) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys (n, d_in), hidden (n, d_model)) per request, averaged over its templates, in one pass.

    keys: the input of ``key_layer``'s edited module; hidden: the output of block
    ``hidden_layer`` (the residual stream after it); both at the subject's last token.
    """
    batch, t = prompts.rows, prompts.n_templates
    device = next(model.parameters()).device
    rows = torch.arange(batch.input_ids.shape[0])
    found: dict[str, torch.Tensor] = {}

    def on_module(_module, inputs, _output):
        found["keys"] = inputs[0][rows, batch.subject_positions].float()  # (n·t, d_in)

    def on_block(_module, _inputs, output):
        found["hidden"] = output[rows, batch.subject_positions].float()  # (n·t, d_model)
        raise forward.StopForward  # nothing above the last layer matters here

    handles = [model.get_submodule(arch.edited_module_name(key_layer)).register_forward_hook(on_module),
               model.get_submodule(arch.layer_prefix(hidden_layer)).register_forward_hook(on_block)]
    try:
        model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), use_cache=False)
    except forward.StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    mean = lambda x: x.reshape(-1, t, x.shape[-1]).mean(1)  # noqa: E731  (n·t, d) -> (n, d)
    return mean(found["keys"]), mean(found["hidden"])


# -- the two halves of MEMIT ---------------------------------------------------------------

def optimise_targets(model: torch.nn.Module, arch: Architecture, prompts: BatchPrompts, hidden: torch.Tensor,
                     hp: MemitHyperParams, progress: bool = True) -> tuple[torch.Tensor, list[list[float]]]:
    """Z (n, d_model) float64: each request's wanted hidden state after the last layer, z_i = h_i + δ_i."""
    last = hp.layers[-1]
    value_hp = hp.value_hparams()
    block = arch.layer_prefix(last)
    requests = prompts.per_request
    targets, losses = [], []
    with tqdm(total=len(requests), desc="memit targets", unit="fact",
              disable=not progress or len(requests) < 2, leave=False) as bar:
        for start in range(0, len(requests), hp.target_group):
            group, base = requests[start : start + hp.target_group], hidden[start : start + hp.target_group]
            if hp.target_group == 1:
                capture = forward.capture_at_layer(model, arch, last, group[0].batch)
                delta, request_losses = optimise_value(model, arch, last, group[0], capture, base[0], value_hp,
                                                       inject_into=block)
                delta, group_losses = delta[None], [request_losses]
            else:
                delta, group_losses = optimise_values_jointly(model, arch, last, group, base, value_hp,
                                                              inject_into=block)
            targets.extend(base.double() + delta.double())
            losses.extend(group_losses)
            bar.update(len(group))
    return torch.stack(targets), losses


def spread_keys(moment: SecondMoment, keys: torch.Tensor, weight: float) -> torch.Tensor:
    """((λC + K Kᵀ)⁻¹ K)ᵀ as rows (n, d_in), float64, for keys as rows (n, d_in).

    Push-through identity: (λC + KKᵀ)⁻¹K = C⁻¹K (λI + KᵀC⁻¹K)⁻¹; the n × n matrix is
    symmetric positive definite, so its solve is cheap and stable.
    """
    keys = keys.double()
    c_inv_keys = moment.solve(keys)  # (n, d_in): rows (C⁻¹k_i)ᵀ
    system = weight * torch.eye(keys.shape[0], dtype=torch.float64) + keys @ c_inv_keys.T  # (n, n)
    return torch.linalg.solve(system, c_inv_keys)  # (n, d_in)


def layer_update(moment: SecondMoment, keys: torch.Tensor, residual: torch.Tensor, module: str, layout: str,
                 weight: float) -> Delta:
    """ΔW = R Kᵀ(λC + KKᵀ)⁻¹ as a rank-n Delta: u = ((λC + KKᵀ)⁻¹K)ᵀ (n, d_in), v = Rᵀ (n, d_out).

    Row i of u and of v belongs to request i, so Σ_i v_iᵀ u_i is the whole update.
    """
    u = spread_keys(moment, keys, weight)
    if not (torch.isfinite(u).all() and torch.isfinite(residual).all()):
        raise EditComputationError(f"the MEMIT update of {module} is not finite (NaN/inf); nothing was written")
    return Delta(module, layout, u.float().cpu(), residual.float().cpu())


# (layer, keys (n, d_in), residual (n, d_out)) -> that layer's Delta; MEMIT's is ``layer_update``
LayerUpdate = Callable[[int, torch.Tensor, torch.Tensor], Delta]


def spread_over_layers(model: torch.nn.Module, arch: Architecture, prompts: BatchPrompts, targets: torch.Tensor,
                       hp: MemitHyperParams, update: LayerUpdate) -> tuple[list[Delta], list[torch.Tensor]]:
    """One Delta per layer, each computed on the model carrying the ones below it, and each
    layer's keys (n, d_in) as the update saw them.

    The model is left carrying them too; the caller puts the weights back.
    """
    before = deltas.applied_deltas(model)
    layers, last = hp.layers, hp.layers[-1]
    made: list[Delta] = []
    seen: list[torch.Tensor] = []
    for done, layer in enumerate(layers):
        keys, hidden = keys_and_hidden(model, arch, layer, last, prompts)
        residual = (targets - hidden.double()) / (len(layers) - done)  # (n, d_model): this layer's share
        made.append(update(layer, keys, residual))
        seen.append(keys)
        deltas.apply(model, [*before, *made])
    return made, seen


# -- the entry point ---------------------------------------------------------------------------

def _moments(stats: StatsCache | Mapping[int, SecondMoment], model, tokenizer, arch: Architecture,
             layers: Sequence[int]) -> dict[int, SecondMoment]:
    moments = dict(stats) if isinstance(stats, Mapping) else stats.get_many(model, tokenizer, layers)
    for layer in layers:
        module = arch.edited_module_name(layer)
        if layer not in moments:
            raise EditComputationError(f"no statistics were given for layer {layer} ({module})")
        if moments[layer].key.module != module:
            raise EditComputationError(f"statistics for {moments[layer].key.module} cannot edit {module}")
    return moments


def compute_memit(
    model: torch.nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    hparams: MemitHyperParams | None = None,
    *,
    stats: StatsCache | Mapping[int, SecondMoment],
    templates: Sequence[str] | None = None,
    progress: bool = True,
) -> MemitResult:
    """Compute one MEMIT batch against the model's current weights; the model is unchanged on return."""
    requests = tuple(requests)
    hp, arch, moments = resolve_batch(model, tokenizer, requests, hparams or MemitHyperParams(), stats)
    update = memit_layer_update(moments, arch, hp.mom2_update_weight)
    result, _keys = compute_batch(model, tokenizer, requests, hp, arch, moments, update, method="memit",
                                  templates=templates, progress=progress)
    return result


def memit_layer_update(moments: Mapping[int, SecondMoment], arch: Architecture, weight: float) -> LayerUpdate:
    """MEMIT's per-layer update (:func:`layer_update`) for :func:`spread_over_layers`."""
    return lambda layer, keys, residual: layer_update(moments[layer], keys, residual, arch.edited_module_name(layer),
                                                      arch.layout, weight)


def resolve_batch(model, tokenizer, requests: Sequence[EditRequest], hp: MemitHyperParams,
                  stats: StatsCache | Mapping[int, SecondMoment]):
    """The hyperparameters with the layer range filled in, the architecture, and each layer's C."""
    if not requests:
        raise EditRequestError("a MEMIT batch needs at least one request")
    arch = architecture_for(model)
    layers = hp.layers if hp.layers is not None else memit_defaults(model)["layers"]
    for layer in layers:
        check_layer(model, layer)
    hp = type(hp).from_dict({**hp.to_dict(), "layers": list(layers)})
    return hp, arch, _moments(stats, model, tokenizer, arch, hp.layers)


def compute_batch(model, tokenizer, requests: Sequence[EditRequest], hp: MemitHyperParams, arch: Architecture,
                  moments: Mapping[int, SecondMoment], update: LayerUpdate, *, method: str,
                  templates: Sequence[str] | None, progress: bool) -> tuple[MemitResult, list[torch.Tensor]]:
    """MEMIT's pipeline with ``update`` making each layer's Delta: targets after the last
    layer, then the layers from the bottom. Returns the result and each layer's keys."""
    started = time.perf_counter()
    requests = tuple(requests)
    templates = tuple(templates) if templates is not None else generate_templates(model, tokenizer, hp.seed, hp.templates)
    fingerprint = deltas.weights_fingerprint(model)
    before = deltas.applied_deltas(model)

    was_training = model.training
    model.eval()
    try:
        prompts = batch_prompts(tokenizer, requests, templates, hp.kl_prompt)
        _, hidden = keys_and_hidden(model, arch, hp.layers[-1], hp.layers[-1], prompts)
        targets, losses = optimise_targets(model, arch, prompts, hidden, hp, progress)
        made, keys = spread_over_layers(model, arch, prompts, targets, hp, update)
    finally:
        if before:
            deltas.apply(model, before)  # bit-exact: apply rebuilds from the pristine weights
        else:
            deltas.restore(model)
        model.train(was_training)
    return MemitResult(
        requests=requests, method=method, hparams=hp.to_dict(), seed=hp.seed, templates=templates,
        layers=hp.layers, deltas=tuple(made), stats_ids=tuple(moments[layer].id for layer in hp.layers),
        weights_fingerprint=fingerprint, seconds=time.perf_counter() - started,
        losses=tuple(tuple(request_losses) for request_losses in losses),
    ), keys
