"""apply/restore on a hand-made module: what is refused is refused before any weight moves."""
from __future__ import annotations

import pytest
import torch

from romevc.architectures import LAYOUT_CONV1D, LAYOUT_LINEAR
from romevc.editing.delta import Delta, applied_deltas, apply, restore


class TwoLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(4, 3)  # weight (out 3, in 4)
        self.b = torch.nn.Linear(4, 3)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_apply_adds_v_outer_u_and_restore_puts_back_the_same_tensor():
    model = TwoLayers()
    before = _weights(model)
    original = model.a.weight.data
    delta = Delta("a", LAYOUT_LINEAR, torch.tensor([1.0, 0, 0, 2]), torch.tensor([0.5, 0, -1]))
    apply(model, [delta])
    assert torch.allclose(model.a.weight, before["a.weight"] + torch.outer(delta.v, delta.u))
    assert torch.equal(model.b.weight, before["b.weight"])
    restore(model)
    assert model.a.weight.data_ptr() == original.data_ptr()  # the very memory set aside, not a copy
    assert torch.equal(model.a.weight, before["a.weight"])


@pytest.mark.parametrize("bad", [
    Delta("b", LAYOUT_LINEAR, torch.ones(5), torch.ones(3)),  # u one too wide
    Delta("b", LAYOUT_CONV1D, torch.ones(4), torch.ones(3)),  # the transposed layout of a (3, 4) weight
    Delta("missing", LAYOUT_LINEAR, torch.ones(4), torch.ones(3)),
])
def test_a_delta_that_does_not_fit_is_refused_before_any_weight_moves(bad):
    model = TwoLayers()
    good = Delta("a", LAYOUT_LINEAR, torch.ones(4), torch.ones(3))
    apply(model, [good])
    after_good = _weights(model)
    with pytest.raises(ValueError, match="b|missing"):
        apply(model, [Delta("a", LAYOUT_LINEAR, 2 * torch.ones(4), torch.ones(3)), bad])
    assert all(torch.equal(p, after_good[n]) for n, p in model.named_parameters())
    assert applied_deltas(model) == (good,)
