"""A weight change ΔW = vᵀu of one module, and applying a set of them exactly.

A delta is rank k: ``u`` is (k, d_in), ``v`` is (k, d_out), ΔW (d_out, d_in) = vᵀ u; a ROME
edit is the k = 1 case and may hold 1-D vectors. The layout of the *stored module weight*
travels with the delta, so a Conv1D weight (d_in, d_out) receives ΔWᵀ. Nothing is guessed
from shapes.

``apply`` always rebuilds the touched weights from pristine copies, adding the deltas'
sum in float32 and casting once. The same delta list therefore gives bit-identical
weights whatever was applied before, which makes revert exact.
"""
from __future__ import annotations

import contextlib
import hashlib
import operator
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from romevc.architectures import LAYOUT_CONV1D, LAYOUT_LINEAR

_PRISTINE = "_romevc_pristine"  # module name -> pristine weight copy, kept on the model
_APPLIED = "_romevc_applied"  # the deltas currently applied, in order
_BASE_FP = "romevc_base_fingerprint"
_ROWS = "_romevc_rows"  # on a decoded buffer: (the float32 matrix, its row views); see row_views


@dataclass(frozen=True, eq=False)
class Delta:
    """ΔW = vᵀ u for the weight of ``module`` (a dotted name in the model)."""

    module: str
    layout: str
    u: torch.Tensor  # (d_in,) or (k, d_in), float32
    v: torch.Tensor  # (d_out,) or (k, d_out), float32

    def __post_init__(self) -> None:
        if self.layout not in (LAYOUT_LINEAR, LAYOUT_CONV1D):
            raise ValueError(f"`layout` must be {LAYOUT_LINEAR!r} or {LAYOUT_CONV1D!r}, got {self.layout!r}")
        if self.u.dim() != self.v.dim() or (self.u.dim() == 2 and self.u.shape[0] != self.v.shape[0]):
            raise ValueError(f"`u` {tuple(self.u.shape)} and `v` {tuple(self.v.shape)} disagree on the rank")

    @property
    def rank(self) -> int:
        return 1 if self.u.dim() == 1 else self.u.shape[0]

    def out_in(self) -> torch.Tensor:
        """ΔW as (d_out, d_in), float32."""
        u = self.u.float().reshape(self.rank, -1)  # (k, d_in)
        v = self.v.float().reshape(self.rank, -1)  # (k, d_out)
        return v.T @ u

    def for_weight(self) -> torch.Tensor:
        """ΔW in the stored layout of the module's weight."""
        delta = self.out_in()
        return delta.T if self.layout == LAYOUT_CONV1D else delta

    def norm(self) -> float:
        """‖ΔW‖_F, computed without forming the matrix: sqrt(Σ_ij (u_i·u_j)(v_i·v_j))."""
        u = self.u.double().reshape(self.rank, -1)
        v = self.v.double().reshape(self.rank, -1)
        return float(((u @ u.T) * (v @ v.T)).sum().clamp_min(0).sqrt())

    def digest(self) -> str:
        """sha256 over module, layout, shapes and the float32 bytes of u and v."""
        h = hashlib.sha256()
        h.update(f"{self.module}\0{self.layout}\0{tuple(self.u.shape)}\0{tuple(self.v.shape)}\0".encode())
        h.update(self.u.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
        h.update(self.v.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
        return h.hexdigest()


LE_FLOAT32 = np.dtype("<f4")  # how u and v are stored everywhere: float32, little-endian


def float32_bytes(t: torch.Tensor) -> bytes:
    """A tensor's values as stored: float32, little-endian, row-major."""
    return t.detach().to(torch.float32).contiguous().cpu().numpy().astype(LE_FLOAT32).tobytes()


def tensor_from_float32_bytes(data: bytes | bytearray, shape: tuple[int, ...]) -> torch.Tensor:
    """The float32 CPU tensor of ``shape`` that :func:`float32_bytes` wrote (a copy, so writable).

    A ``bytearray`` is already a private, writable copy: on a little-endian machine the
    tensor then shares its memory instead of copying it again.
    """
    if isinstance(data, bytearray) and sys.byteorder == "little":
        return torch.frombuffer(data, dtype=torch.float32).reshape(shape)
    return torch.from_numpy(np.frombuffer(data, dtype=LE_FLOAT32).astype(np.float32)).reshape(shape)


def base_fingerprint(model: torch.nn.Module) -> str:
    """The fingerprint of the model's unedited weights (set by the loader, else hashed once)."""
    value = getattr(model, _BASE_FP, None)
    if value is None:
        h = hashlib.sha256()
        pristine = getattr(model, _PRISTINE, {})
        for name, param in model.state_dict().items():
            module = name.rsplit(".", 1)[0]
            tensor = pristine.get(module, param) if name.endswith(".weight") else param
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        value = h.hexdigest()
        setattr(model, _BASE_FP, value)
    return value


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Fingerprint of the weights as they are now: the base plus the applied deltas, in order."""
    applied = applied_deltas(model)
    if not applied:
        return base_fingerprint(model)
    h = hashlib.sha256(base_fingerprint(model).encode())
    for delta in applied:
        h.update(delta.digest().encode())
    return h.hexdigest()


def applied_deltas(model: torch.nn.Module) -> tuple[Delta, ...]:
    return tuple(getattr(model, _APPLIED, ()))


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """A single-threaded BLAS gives the same bits whatever thread count the caller runs with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def row_views(matrix: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The rows of ``matrix`` as views, remembered with its memory.

    Stacking exactly these rows again, in order (:func:`stacked_factors`), then hands back
    ``matrix`` itself after one identity check per row: a 1,000-edit checkout decodes each
    module's blobs into one matrix and gives every edit a row of it.
    """
    rows = matrix.unbind(0)
    if rows and matrix.dim() == 2 and matrix.dtype == torch.float32 and matrix.device.type == "cpu":
        setattr(rows[0]._base, _ROWS, (matrix, rows))  # _base: the memory every row view shares
    return rows


def _decoded_matrix(rows: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The matrix whose :func:`row_views` are exactly ``rows``, in order (None if they are not)."""
    root = rows[0]._base if rows else None
    matrix, own = getattr(root, _ROWS, (None, ())) if root is not None else (None, ())
    if len(own) == len(rows) and all(map(operator.is_, own, rows)):
        return matrix
    return None


def stacked_factors(deltas: Sequence[Delta]) -> tuple[torch.Tensor, torch.Tensor]:
    """U (k, d_in) and V (k, d_out) of deltas on one module, float32, in edit order: Σ ΔW = Vᵀ U.

    A module's edits as a checkout decodes them (:func:`row_views`) are their decoded
    matrices as they are, with no copy; rank-one CPU deltas otherwise stack without a
    per-delta reshape: a 1,000-edit checkout spends its time in the product, not in Python.
    """
    us, vs = [d.u for d in deltas], [d.v for d in deltas]
    u, v = _decoded_matrix(us), _decoded_matrix(vs)
    if u is not None and v is not None:
        return u, v
    if all(d.u.dim() == 1 and d.u.device.type == "cpu" and d.v.device.type == "cpu" for d in deltas):
        return torch.stack(us).float(), torch.stack(vs).float()
    u = torch.cat([d.u.detach().reshape(d.rank, -1).cpu() for d in deltas]).float()
    v = torch.cat([d.v.detach().reshape(d.rank, -1).cpu() for d in deltas]).float()
    return u, v


ROW_BLOCK = 128  # rows of a weight per product: fixed, so the bits never depend on the thread count


def updated_weight(pristine: torch.Tensor, deltas: Sequence[Delta], layout: str,
                   pool: ThreadPoolExecutor | None = None) -> torch.Tensor:
    """pristine + Σ ΔW in the weight's layout, as fused float32 product-and-adds, cast once.

    One matrix product for all of a module's deltas makes a 1,000-edit checkout cost about
    one base load. On CPU the product runs in fixed blocks of :data:`ROW_BLOCK` rows, each
    a single-threaded BLAS call, spread over ``pool``: every block is computed the same
    way whatever the pool's size, so the result is a function of the edit list alone (a
    multi-threaded BLAS call may split its sums differently from run to run).
    """
    u, v = stacked_factors(deltas)
    left, right = (v.T, u) if layout == LAYOUT_LINEAR else (u.T, v)  # (out, k)(k, in) or (in, k)(k, out)
    base = pristine.float()
    if base.device.type != "cpu":
        return torch.addmm(base, left.to(base.device), right.to(base.device)).to(pristine.dtype)
    total = torch.empty_like(base)
    left = left.contiguous()

    def block(start: int) -> None:
        stop = start + ROW_BLOCK
        torch.addmm(base[start:stop], left[start:stop], right, out=total[start:stop])

    starts = range(0, base.shape[0], ROW_BLOCK)
    with _one_thread():
        if pool is None:
            for start in starts:
                block(start)
        else:
            list(pool.map(block, starts))
    return total.to(pristine.dtype)


def _check_fits(name: str, model: torch.nn.Module, deltas: Sequence[Delta]) -> None:
    """Refuse deltas for a missing module, of mixed layouts, or whose widths are not the
    weight's (a forged or foreign edit, which must never broadcast)."""
    try:
        weight = model.get_submodule(name).weight
    except AttributeError:
        raise ValueError(f"the model has no module {name!r} with a weight") from None
    layout = deltas[0].layout
    if any(d.layout != layout for d in deltas):
        raise ValueError(f"deltas on {name} disagree on the weight layout")
    d_out, d_in = weight.shape if layout == LAYOUT_LINEAR else tuple(reversed(weight.shape))
    for delta in deltas:
        if delta.u.shape[-1] != d_in or delta.v.shape[-1] != d_out:
            raise ValueError(f"a delta for {name} has u {tuple(delta.u.shape)} and v {tuple(delta.v.shape)}, "
                             f"but the weight maps {d_in} inputs to {d_out} outputs")


@torch.no_grad()
def apply(model: torch.nn.Module, deltas: Sequence[Delta]) -> None:
    """Set the model's weights to pristine + Σ deltas, whatever was applied before.

    Every touched weight is rebuilt from its pristine tensor: pristine + Vᵀ U of its deltas
    in one float32 product-and-add (``updated_weight``), cast once to the model's dtype,
    put in place of the parameter's data. The same delta list always gives the same bits.
    Every delta is checked against its module first, so a refused list changes nothing.

    The pristine tensor is the parameter's original data, set aside rather than copied:
    a freshly loaded checkpoint's weights are memory-mapped, and neither a copy nor an
    in-place write has to touch them — which keeps a 1,000-edit checkout near a plain load.
    """
    base_fingerprint(model)  # pin the base fingerprint before the weights move
    pristine: dict[str, torch.Tensor] = getattr(model, _PRISTINE, None) or {}
    by_module: dict[str, list[Delta]] = {}
    for delta in deltas:
        by_module.setdefault(delta.module, []).append(delta)
    for name, module_deltas in by_module.items():  # every check before the first write
        _check_fits(name, model, module_deltas)
    threads = torch.get_num_threads()
    with ThreadPoolExecutor(threads) if threads > 1 else contextlib.nullcontext() as pool:
        for name in sorted(set(by_module) | set(pristine)):
            weight = model.get_submodule(name).weight
            if name not in pristine:
                pristine[name] = weight.data
            if name not in by_module:
                weight.data = pristine[name]
                continue
            weight.data = updated_weight(pristine[name], by_module[name], by_module[name][0].layout, pool)
    setattr(model, _PRISTINE, {name: t for name, t in pristine.items() if name in by_module})
    setattr(model, _APPLIED, tuple(deltas))


@torch.no_grad()
def restore(model: torch.nn.Module) -> None:
    """Put back every weight ``apply`` touched, bit for bit (the very tensors it set aside)."""
    for name, weight in (getattr(model, _PRISTINE, None) or {}).items():
        model.get_submodule(name).weight.data = weight
    setattr(model, _PRISTINE, {})
    setattr(model, _APPLIED, ())


@contextlib.contextmanager
def base_weights(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run a block on the unedited weights, then put the applied deltas back exactly."""
    deltas = applied_deltas(model)
    if not deltas:
        yield model
        return
    restore(model)
    try:
        yield model
    finally:
        apply(model, deltas)
