"""AlphaEdit: MEMIT's update confined to the null space of preserved knowledge (Fang et al. 2025).

Sequential MEMIT/ROME edits wear a model down because each update also moves the outputs
of keys it was never meant to touch. AlphaEdit projects every update onto directions the
preserved keys barely use, so those outputs stay put, and drops MEMIT's λC term:

    ΔW_l = R_l K_lᵀ P (K_p K_pᵀ P + K_l K_lᵀ P + α I)⁻¹               (d_out × d_in, rank ≤ n)

P = U₀U₀ᵀ, U₀ the eigenvectors of C = E[k kᵀ] with the smallest eigenvalues, as many as
keep their share of C's trace at most ``null_space_energy`` (the paper thresholds the
eigenvalues instead; an energy fraction means the same across models and layers). K_p
holds the keys of the earlier edits of a sequence, so later edits also leave those alone;
the caller carries them (:class:`PreservedKeys`), as the reference implementation keeps
them in memory during a run. With u = (A⁻¹ P K)ᵀ, A = P(K_p K_pᵀ + K Kᵀ) + αI, and
v = Rᵀ, ΔW = vᵀu is stored like a MEMIT batch: one rank-one piece per (request, layer).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from romevc.architectures import Architecture
from romevc.editing.delta import Delta
from romevc.editing.memit import batch_prompts, compute_batch, keys_and_hidden, resolve_batch
from romevc.editing.memit_hparams import MemitHyperParams
from romevc.editing.request import EditRequest
from romevc.editing.result import MemitResult
from romevc.editing.stats import SecondMoment, StatsCache
from romevc.editing.templates import generate_templates
from romevc.errors import EditComputationError, HyperParamsError


@dataclass(frozen=True)
class AlphaEditHyperParams(MemitHyperParams):
    # 0.1 measured on the demo model (20 sequential CounterFact edits, batches of one):
    # 0.02 / 0.1 / 0.3 gave ES 75 / 95 / 100, PS 65 / 90 / 85, NS 70 throughout (unedited 75).
    null_space_energy: float = field(default=0.1, metadata={
        "help": "the projection keeps the eigenvectors of C whose eigenvalues sum to at most this share of its "
                "trace: how much of ordinary text's key energy an update may touch"})
    l2: float = field(default=10.0, metadata={"help": "α in (P(K_p K_pᵀ + K Kᵀ) + αI)⁻¹ (paper: 10)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        energy, l2 = self.null_space_energy, self.l2
        if not (isinstance(energy, (int, float)) and not isinstance(energy, bool) and 0 < energy < 1):
            raise HyperParamsError(f"`null_space_energy` must be a number in (0, 1), got {energy!r}")
        if not (isinstance(l2, (int, float)) and not isinstance(l2, bool) and math.isfinite(l2) and l2 > 0):
            raise HyperParamsError(f"`l2` must be a finite positive number, got {l2!r}")
        object.__setattr__(self, "null_space_energy", float(energy))
        object.__setattr__(self, "l2", float(l2))


_PROJECTORS: dict[tuple[str, float], torch.Tensor] = {}


def null_space_projector(moment: SecondMoment, energy: float) -> torch.Tensor:
    """P (d_in × d_in, float64) onto the low-energy eigenvectors of C (cached per statistics and energy)."""
    key = (moment.id, energy)
    if key not in _PROJECTORS:
        values, vectors = torch.linalg.eigh(moment.mom2)  # ascending
        share = torch.cumsum(values.clamp_min(0), 0) / values.clamp_min(0).sum()
        kept = int((share <= energy).sum())
        if kept == 0:
            raise EditComputationError(
                f"no direction of {moment.key.module} holds under {energy:g} of C's energy; raise null_space_energy")
        _PROJECTORS[key] = vectors[:, :kept] @ vectors[:, :kept].T
    return _PROJECTORS[key]


class PreservedKeys:
    """K_p K_pᵀ per layer: the keys earlier edits of a sequence were made for."""

    def __init__(self) -> None:
        self.gram: dict[int, torch.Tensor] = {}

    def add(self, layers: Sequence[int], keys: Sequence[torch.Tensor]) -> None:
        for layer, k in zip(layers, keys):
            k = k.double()
            self.gram[layer] = self.gram.get(layer, 0) + k.T @ k

    def of(self, layer: int, d_in: int) -> torch.Tensor:
        return self.gram.get(layer, torch.zeros(d_in, d_in, dtype=torch.float64))


PRESERVE_CHUNK = 32  # earlier requests per forward pass when their keys are computed


@torch.no_grad()
def add_request_keys(preserved: PreservedKeys, model: torch.nn.Module, tokenizer, arch: Architecture,
                     requests: Sequence[EditRequest], layers: Sequence[int], templates: Sequence[str],
                     kl_prompt: str) -> None:
    """Add the keys of ``requests`` at each of ``layers``, on the model as it is now.

    How a ledger protects a branch's earlier edits without storing keys: their requests
    are keyed with this batch's templates on the weights that carry them, which gives
    the same numbers every time the batch is recomputed on those weights.
    """
    for start in range(0, len(requests), PRESERVE_CHUNK):
        prompts = batch_prompts(tokenizer, requests[start : start + PRESERVE_CHUNK], templates, kl_prompt)
        preserved.add(layers, [keys_and_hidden(model, arch, layer, layer, prompts)[0] for layer in layers])


def projected_update(projector: torch.Tensor, preserved: torch.Tensor, keys: torch.Tensor, residual: torch.Tensor,
                     l2: float, module: str, layout: str) -> Delta:
    """ΔW = R Kᵀ P (P(K_p K_pᵀ + K Kᵀ) + αI)⁻¹ as a rank-n Delta: u = (A⁻¹ P Kᵀ)ᵀ, v = R."""
    k = keys.double().T  # (d_in, n)
    system = projector @ (preserved + k @ k.T) + l2 * torch.eye(k.shape[0], dtype=torch.float64)
    u = torch.linalg.solve(system, projector @ k).T  # (n, d_in)
    if not (torch.isfinite(u).all() and torch.isfinite(residual).all()):
        raise EditComputationError(f"the AlphaEdit update of {module} is not finite (NaN/inf); nothing was written")
    return Delta(module, layout, u.float().cpu(), residual.float().cpu())


def compute_alphaedit(
    model: torch.nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    hparams: AlphaEditHyperParams | None = None,
    *,
    stats: StatsCache | Mapping[int, SecondMoment],
    preserved: PreservedKeys | None = None,
    preserve: Sequence[EditRequest] = (),
    templates: Sequence[str] | None = None,
    progress: bool = True,
) -> tuple[MemitResult, list[torch.Tensor]]:
    """One AlphaEdit batch against the model's current weights (the model is unchanged on
    return), and each layer's keys: pass them to ``preserved.add`` before the next batch.

    Protected: the keys in ``preserved`` (a run that carries them), and those of the
    requests in ``preserve`` computed now (:func:`add_request_keys`; what the ledger does).
    """
    requests = tuple(requests)
    hp, arch, moments = resolve_batch(model, tokenizer, requests, hparams or AlphaEditHyperParams(), stats)
    if preserve:
        templates = tuple(templates) if templates is not None else generate_templates(model, tokenizer, hp.seed,
                                                                                     hp.templates)
        carried = preserved
        preserved = PreservedKeys()
        preserved.gram.update(carried.gram if carried else {})  # add() rebinds, so the caller's stays as it was
        add_request_keys(preserved, model, tokenizer, arch, tuple(preserve), hp.layers, templates, hp.kl_prompt)
    preserved = preserved or PreservedKeys()

    def update(layer: int, keys: torch.Tensor, residual: torch.Tensor) -> Delta:
        projector = null_space_projector(moments[layer], hp.null_space_energy)
        return projected_update(projector, preserved.of(layer, keys.shape[1]), keys, residual, hp.l2,
                                arch.edited_module_name(layer), arch.layout)

    return compute_batch(model, tokenizer, requests, hp, arch, moments, update, method="alphaedit",
                         templates=templates, progress=progress)
