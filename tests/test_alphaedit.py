"""AlphaEdit: the null-space projector, updates that leave preserved keys alone, batches that hold."""
from __future__ import annotations

import pytest
import torch

from romevc.architectures import LAYOUT_LINEAR
from romevc.editing import delta as deltas
from romevc.editing.alphaedit import (AlphaEditHyperParams, PreservedKeys, compute_alphaedit, null_space_projector,
                                      projected_update)
from romevc.editing.stats import SecondMoment, StatsKey
from romevc.errors import HyperParamsError
from romevc.predict import top_k
from tests.test_memit import BATCH, TEMPLATES_SHORT

HP = dict(layers=(0, 1), v_steps=15)


def _moment(d: int = 12, seed: int = 0) -> SecondMoment:
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    values = torch.logspace(-3, 0, d, dtype=torch.float64)  # a spread spectrum, like real keys
    key = StatsKey(fingerprint="ab" * 32, module="m", corpus_id=f"c{seed}", n_tokens=1)
    return SecondMoment(key, basis @ torch.diag(values) @ basis.T, 1)


def test_projector_keeps_the_low_energy_directions():
    moment = _moment()
    projector = null_space_projector(moment, 0.01)
    assert torch.allclose(projector, projector.T) and torch.allclose(projector @ projector, projector, atol=1e-10)
    rank = round(float(projector.trace()))
    assert 0 < rank < 12
    share = float((projector @ moment.mom2).trace() / moment.mom2.trace())
    assert share <= 0.01  # what the update may touch holds at most that share of C's energy
    wider = null_space_projector(moment, 0.2)
    assert round(float(wider.trace())) > rank


def test_the_update_is_zero_on_every_preserved_direction_and_meets_the_keys():
    """ΔW x = 0 whenever Px = 0 (exactly, by the algebra of A = P M + αI), and with α small the
    update writes R on keys inside the null space."""
    moment = _moment()
    projector = null_space_projector(moment, 0.3)
    g = torch.Generator().manual_seed(1)
    keys = (projector @ torch.randn(12, 2, generator=g, dtype=torch.float64)).T  # (n=2, d_in), in the null space
    residual = torch.randn(2, 5, generator=g, dtype=torch.float64)
    earlier = torch.randn(3, 12, generator=g, dtype=torch.float64)
    delta = projected_update(projector, earlier.T @ earlier, keys, residual, 1e-6, "m", LAYOUT_LINEAR)
    dw = delta.out_in().double()  # (d_out, d_in)
    outside = torch.eye(12, dtype=torch.float64) - projector
    assert dw.norm() > 1 and (dw @ outside).norm() < 1e-5 * dw.norm()
    # Earlier keys projected into the null space compete with the new ones; these two were drawn
    # apart from them, so they are met closely but, with 3 + 2 keys in a 4-5-dim space, not exactly.
    assert torch.allclose(dw @ keys.T, residual.T, rtol=0.1, atol=0.1)


def test_bad_hyperparameters_are_refused():
    with pytest.raises(HyperParamsError, match="null_space_energy"):
        AlphaEditHyperParams(null_space_energy=1.5)
    with pytest.raises(HyperParamsError, match="`l2`"):
        AlphaEditHyperParams(l2=0)
    assert AlphaEditHyperParams.from_dict(AlphaEditHyperParams(l2=3).to_dict()).l2 == 3.0


def test_a_sequence_of_batches_holds_and_protects_the_earlier_keys(tiny, tiny_stats, one_thread):
    """Two batches of three on the tiny GPT-2: each flips its facts, the model carries both,
    and the second update moves the first batch's keys less than it would without them."""
    model, tokenizer = tiny.model, tiny.tokenizer
    hp = AlphaEditHyperParams(**HP, null_space_energy=0.3, l2=1.0)
    preserved = PreservedKeys()
    first, first_keys = compute_alphaedit(model, tokenizer, BATCH[:3], hp, stats=tiny_stats,
                                          templates=TEMPLATES_SHORT, progress=False)
    assert first.method == "alphaedit" and first.layers == (0, 1)
    assert all(d.rank == 3 for d in first.deltas)
    preserved.add(first.layers, first_keys)
    try:
        deltas.apply(model, list(first.deltas))
        second, _ = compute_alphaedit(model, tokenizer, BATCH[3:6], hp, stats=tiny_stats, preserved=preserved,
                                      templates=TEMPLATES_SHORT, progress=False)
        unprotected, _ = compute_alphaedit(model, tokenizer, BATCH[3:6], hp, stats=tiny_stats,
                                           templates=TEMPLATES_SHORT, progress=False)
        deltas.apply(model, [*first.deltas, *second.deltas])
        flipped = [top_k(model, tokenizer, r.text, 1)[0].token.strip() == r.target_new for r in BATCH[:6]]
    finally:
        deltas.restore(model)
    assert sum(flipped) >= 5, flipped
    for layer, keys, protected, free in zip(first.layers, first_keys, second.deltas, unprotected.deltas):
        moved = lambda d: (d.out_in().double() @ keys.double().T).norm()  # noqa: E731
        assert moved(protected) < moved(free), layer
