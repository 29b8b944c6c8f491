"""ROME: a closed-form rank-one rewrite of one MLP output projection (Meng et al. 2022).

For a fact (subject, relation, object) the edited module W (d_out × d_in, plus bias b)
maps a key k — its input at the subject's last token — to a value. ROME finds a value
v* that makes the model say the new object, then the smallest change (in the metric of
the key covariance C) that maps k to v*:

    ΔW = (v* − (W k + b)) (C⁻¹k)ᵀ / ((C⁻¹k)ᵀ k),   stored as v = v* − (W k + b), u = C⁻¹k / (k·C⁻¹k)

The update direction uses the key averaged over context templates. ``rome`` (the paper's
code) normalises by the *bare prompt's* key; when that key is far from the average (a
subject at position 0) the update explodes and the model collapses under sequential
edits. ``r-rome`` (Gupta et al. 2024) uses the averaged key everywhere, which is the
default here; by default (``prompt_key``) its u also meets uᵀk₀ = 1 for the bare
prompt's key k₀, still rank one, so prompts that open with the subject are edited too.

Every function is pure: the model is unchanged on return, randomness comes from the seed
in the hyperparameters, and statistics come in through an explicit cache object.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from romevc.architectures import Architecture, architecture_for, check_layer, default_layer
from romevc.editing import forward
from romevc.editing.delta import Delta, weights_fingerprint
from romevc.editing.hparams import RomeHyperParams
from romevc.editing.request import EditRequest, subject_last_token_index
from romevc.editing.result import EditResult
from romevc.editing.stats import SecondMoment, StatsCache
from romevc.editing.templates import generate_templates
from romevc.errors import EditComputationError, EditRequestError

log = logging.getLogger(__name__)

IGNORE = -100  # label of positions that carry no target token


# -- tokens ----------------------------------------------------------------------------

def target_token_ids(tokenizer, text: str, target: str) -> list[int]:
    """Tokens of " target" as they follow ``text``; the target is seen after a space."""
    prompt_ids = tokenizer(text)["input_ids"]
    full_ids = tokenizer(f"{text} {target}")["input_ids"]
    if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        return full_ids[len(prompt_ids):]
    # The space merged into the prompt's last token: tokenise the target on its own.
    ids = tokenizer(f" {target}", add_special_tokens=False)["input_ids"]
    if not ids:
        raise EditRequestError(f"the target {target!r} tokenises to nothing")
    return ids


@dataclass(frozen=True)
class EditPrompts:
    """The batch the value is optimised on: template-prefixed prompts + target, then the KL prompt."""

    batch: forward.PromptBatch
    labels: torch.Tensor  # (n_rewrite, seq): target ids at the positions that predict them
    n_rewrite: int  # rows 0..n_rewrite-1 carry the target; the last row is the KL prompt


def build_prompts(tokenizer, request: EditRequest, templates: Sequence[str], kl_prompt: str) -> EditPrompts:
    target_ids = target_token_ids(tokenizer, request.text, request.target_new)
    rows, positions, label_rows = [], [], []
    for template in templates:
        prefix = template[: template.index("{}")]
        prompt_ids = tokenizer(prefix + request.text)["input_ids"]
        positions.append(subject_last_token_index(tokenizer, request.prompt, request.subject, prefix))
        rows.append(prompt_ids + target_ids[:-1])
        # Token j of the target is predicted at the position just before it.
        label_rows.append((len(prompt_ids) - 1, target_ids))
    kl_ids = tokenizer(kl_prompt.format(request.subject))["input_ids"]
    rows.append(kl_ids)
    positions.append(subject_last_token_index(tokenizer, kl_prompt, request.subject))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = forward.pad_batch(rows, positions, pad_id)
    labels = torch.full((len(templates), batch.input_ids.shape[1]), IGNORE, dtype=torch.long)
    for i, (start, ids) in enumerate(label_rows):
        labels[i, start : start + len(ids)] = torch.tensor(ids)
    if (batch.subject_positions >= batch.attention_mask.sum(1)).any():
        raise EditRequestError(f"cannot locate the subject {request.subject!r} in the tokenised prompt")
    return EditPrompts(batch, labels, len(templates))


# -- the value v* ------------------------------------------------------------------------

@contextlib.contextmanager
def frozen_parameters(model: torch.nn.Module) -> Iterator[None]:
    """No parameter gradients inside the block: only δ is optimised."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _logits_reader(model, arch: Architecture, layer: int, prompts: EditPrompts,
                   capture: forward.Capture, suffix: forward.SuffixStack | None, fast: bool):
    """One forward pass; returns ``read(rows, positions) -> logits (n, vocab)``.

    The fast path runs only the layers from the edited one up — from the subject on where
    the model allows (:class:`forward.SuffixStack`), else whole rows from cached inputs —
    and projects to the vocabulary only where read. The plain path is the reference's:
    the whole model, all logits at every position.
    """
    if suffix is not None:
        hidden = suffix.run()
        return lambda rows, positions: forward.logits_at(model, arch, hidden, rows, suffix.columns(rows, positions))
    if fast:
        hidden = forward.run_from_layer(model, arch, layer, capture.layer_input, prompts.batch.attention_mask)
        return lambda rows, positions: forward.logits_at(model, arch, hidden, rows, positions)
    device = next(model.parameters()).device
    logits = model(input_ids=prompts.batch.input_ids.to(device),
                   attention_mask=prompts.batch.attention_mask.to(device), use_cache=False).logits
    return lambda rows, positions: logits[rows, positions].float()


def optimise_value(model, arch: Architecture, layer: int, prompts: EditPrompts,
                   capture: forward.Capture, base_value: torch.Tensor, hp: RomeHyperParams,
                   *, inject_into: str | None = None) -> tuple[torch.Tensor, list[float]]:
    """δ (d_out,) that, added to the edited module's output at the subject, makes the target likely.

    Loss = mean NLL of the target over all template prompts + kl_factor · KL on the KL
    prompt + weight decay · ‖δ‖/‖v‖², with ‖δ‖ clamped to clamp_norm_factor · ‖v‖.
    ``inject_into`` names another module of ``layer`` to add δ to instead: MEMIT passes
    the block itself, whose output is the residual stream after the layer.
    """
    device = next(model.parameters()).device
    module = model.get_submodule(inject_into or arch.edited_module_name(layer))
    batch, n = prompts.batch, prompts.n_rewrite
    labels = prompts.labels.to(device)
    label_rows, label_pos = (labels != IGNORE).nonzero(as_tuple=True)  # every (row, position) with a target
    label_ids = labels[label_rows, label_pos]
    kl_row = torch.tensor([n], device=device)
    kl_pos = batch.subject_positions[n:].to(device)
    tokens_per_row = (labels != IGNORE).sum(1).float()  # (n,)

    delta = torch.zeros(base_value.shape[0], device=device, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=hp.v_lr)
    max_norm = hp.clamp_norm_factor * base_value.norm()
    kl_init: torch.Tensor | None = None
    losses: list[float] = []
    context = frozen_parameters(model) if hp.fast_path else contextlib.nullcontext()
    suffix = None
    if hp.fast_path and forward.suffix_supported(model):
        suffix = forward.SuffixStack(model, arch, layer, capture.layer_input, batch)
    inject_at = suffix.inject_positions if suffix is not None else batch.subject_positions.to(device)
    with context, forward.add_at_positions(module, delta, inject_at):
        for _step in range(hp.v_steps):
            optimiser.zero_grad()
            read = _logits_reader(model, arch, layer, prompts, capture, suffix, hp.fast_path)
            log_probs = torch.log_softmax(read(label_rows, label_pos), -1)  # (n_label_tokens, vocab)
            token_nll = -log_probs.gather(1, label_ids[:, None]).squeeze(1)  # (n_label_tokens,)
            nll = (torch.zeros(n, device=device).index_add(0, label_rows, token_nll) / tokens_per_row).mean()
            kl_log_probs = torch.log_softmax(read(kl_row, kl_pos), -1)  # (1, vocab)
            if kl_init is None:
                kl_init = kl_log_probs.detach().clone()
            kl = hp.kl_factor * F.kl_div(kl_init, kl_log_probs, log_target=True, reduction="batchmean")
            decay = hp.v_weight_decay * (delta.norm() / base_value.norm() ** 2)
            loss = nll + kl + decay
            losses.append(loss.item())
            if not torch.isfinite(loss):
                raise EditComputationError(
                    f"the value optimisation diverged (loss {float(loss)}) at step {_step}; nothing was written. "
                    "Try a smaller --lr or another layer"
                )
            if (nll + kl).item() < hp.early_stop_loss:  # the target is already likely enough
                break
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    if not hp.fast_path:
        model.zero_grad(set_to_none=True)
    return delta.detach(), losses


# -- the update ----------------------------------------------------------------------------

PARALLEL_KEYS = 1e-6  # 1 − cos² (in the C⁻¹ metric) below which k₀ adds no constraint of its own
# Meeting k₀ too may lengthen u at most this much; beyond it k₀ is nearly orthogonal to k̄ and the
# second constraint would buy one prompt's efficacy with a far larger change of W (CounterFact
# records 117 and 152 of the first 200: 4.8× and 11.9×; every other record ≤ 2.75×).
PROMPT_KEY_MAX_GROWTH = 3.0


def rank_one_update(capture: forward.Capture, delta: torch.Tensor, moment: SecondMoment,
                    n_rewrite: int, method: str, prompt_key: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v) with ΔW = v uᵀ mapping the chosen keys k to v* = W k + b + δ.

    k̄ is the key averaged over the template prompts, k₀ the bare prompt's. ``rome`` takes
    the direction C⁻¹k̄ normalised so that uᵀk₀ = 1; ``r-rome`` normalises by k̄ itself. With
    ``prompt_key`` r-rome takes the least-C-norm u meeting both uᵀk̄ = 1 and uᵀk₀ = 1: when
    the subject opens the prompt, k₀ sits far from k̄ and would otherwise keep most of its
    old value (CounterFact efficacy misses); when the two keys are parallel, or when serving
    k₀ would make u more than :data:`PROMPT_KEY_MAX_GROWTH` times longer, it is plain r-rome.
    """
    keys = capture.keys[:n_rewrite].double()  # (n_rewrite, d_in); row 0 is the bare prompt
    mean_key = keys.mean(0)
    direction = moment.solve(mean_key)  # C⁻¹ k̄, (d_in,)
    if method == "rome":
        u = direction / direction.dot(keys[0])
    else:
        u = direction / direction.dot(mean_key)
        if prompt_key:
            both = torch.stack([mean_key, keys[0]])  # (2, d_in)
            solved = torch.stack([direction, moment.solve(keys[0])])  # C⁻¹ kᵢ
            gram = solved @ both.T  # kᵢᵀ C⁻¹ kⱼ, symmetric positive semi-definite
            if 1 - gram[0, 1] ** 2 / (gram[0, 0] * gram[1, 1]) > PARALLEL_KEYS:
                both_met = torch.linalg.solve(gram, torch.ones(2, dtype=gram.dtype)) @ solved
                if both_met.norm() <= PROMPT_KEY_MAX_GROWTH * u.norm():
                    u = both_met
    # δ was added to exactly the module output W k + b at each prompt's subject, so for
    # every key the update is asked to serve, v* − (W k + b) = δ.
    return u.float(), delta.float()


def compute_edit(
    model: torch.nn.Module,
    tokenizer,
    request: EditRequest,
    hparams: RomeHyperParams | None = None,
    *,
    stats: StatsCache | SecondMoment,
    templates: Sequence[str] | None = None,
) -> EditResult:
    """Compute one ROME edit against the model's current weights; the model is unchanged on return."""
    hp = hparams or RomeHyperParams()
    started = time.perf_counter()
    arch = architecture_for(model)
    layer = hp.layer if hp.layer is not None else default_layer(model)
    check_layer(model, layer)
    hp = RomeHyperParams.from_dict({**hp.to_dict(), "layer": layer})
    moment = stats if isinstance(stats, SecondMoment) else stats.get(model, tokenizer, layer)
    module_name = arch.edited_module_name(layer)
    if moment.key.module != module_name:
        raise EditComputationError(f"statistics for {moment.key.module} cannot edit {module_name}")
    templates = tuple(templates) if templates is not None else generate_templates(model, tokenizer, hp.seed, hp.templates)

    was_training = model.training
    model.eval()
    try:
        prompts = build_prompts(tokenizer, request, templates, hp.kl_prompt)
        capture = forward.capture_at_layer(model, arch, layer, prompts.batch)
        n = prompts.n_rewrite
        base_value = capture.values[:n].mean(0) if hp.method == "r-rome" else capture.values[0]
        delta, losses = optimise_value(model, arch, layer, prompts, capture, base_value, hp)
        u, v = rank_one_update(capture, delta, moment, n, hp.method, hp.prompt_key)
    finally:
        model.train(was_training)
    if not (torch.isfinite(u).all() and torch.isfinite(v).all()):
        raise EditComputationError("the rank-one update is not finite (NaN/inf); nothing was written")
    return EditResult(
        request=request, method=hp.method, hparams=hp.to_dict(), seed=hp.seed, templates=templates,
        layer=layer, delta=Delta(module_name, arch.layout, u.cpu(), v.cpu()), stats_id=moment.id,
        weights_fingerprint=weights_fingerprint(model), seconds=time.perf_counter() - started,
        losses=tuple(losses),
    )

