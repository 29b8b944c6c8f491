"""Checkout's lean read path: ids verified from the stored JSON text, without decoding it."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from romevc.ledger import LAYOUT_CONV1D, LAYOUT_LINEAR, CommitRecord, CorruptObjectError, EditRecord, Ledger, RepoInfo
from romevc.ledger.models import SqlEdit
from romevc.ledger.objects import canonical_json, edit_id_from_stored

INFO = RepoInfo(base_id="tiny", architecture="gpt2", dtype="float32", base_fingerprint="cd" * 32,
                module_template="transformer.h.{}.mlp.c_proj", layout=LAYOUT_CONV1D)

json_scalars = st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.text(max_size=12) \
    | st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def _edit(rng: np.random.Generator, *, request: dict, hparams: dict, templates: list[str], module: str,
          layout: str, rank: int, seed: int, layer: int) -> EditRecord:
    u = rng.standard_normal(rank * 6).astype("<f4").tobytes()
    v = rng.standard_normal(rank * 4).astype("<f4").tobytes()
    return EditRecord.create(request=request, method="r-rome", hparams=hparams, seed=seed, templates=templates,
                             layer=layer, module=module, layout=layout, u=u, v=v, rank=rank, stats_id=None,
                             weights_fingerprint=None, author="t", time=0)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(request=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
       hparams=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
       templates=st.lists(st.text(max_size=10), max_size=3), module=st.text(min_size=1, max_size=12),
       layout=st.sampled_from([LAYOUT_LINEAR, LAYOUT_CONV1D]), rank=st.integers(1, 3),
       seed=st.integers(0, 2**31), layer=st.integers(0, 100))
def test_id_from_stored_json_equals_the_canonical_id(request, hparams, templates, module, layout, rank, seed, layer):
    """Any JSON (unicode, nesting, key order) hashes the same spliced from its stored text as re-encoded."""
    try:
        edit = _edit(np.random.default_rng(seed), request=request, hparams=hparams, templates=templates,
                     module=module, layout=layout, rank=rank, seed=seed, layer=layer)
    except ValueError:  # lone surrogates and the like are refused at creation, never stored
        return
    assert edit_id_from_stored(
        request_json=canonical_json(edit.request), method=edit.method, hparams_json=canonical_json(edit.hparams),
        seed=edit.seed, templates_json=canonical_json(list(edit.templates)), layer=edit.layer, module=edit.module,
        layout=edit.layout, rank=edit.rank, d_in=edit.d_in, d_out=edit.d_out, u=edit.u, v=edit.v) == edit.id


def test_deltas_of_reads_the_set_in_order_and_refuses_a_flipped_byte(tmp_path):
    rng = np.random.default_rng(0)
    edits = [_edit(rng, request={"prompt": "{} is in", "subject": f"S{i}", "target_new": "Rome ü"},
                   hparams={"layer": i}, templates=["{}", "Hé. {}"], module=f"transformer.h.{i}.mlp.c_proj",
                   layout=LAYOUT_CONV1D, rank=1 + i % 2, seed=i, layer=i) for i in range(4)]
    with Ledger.create(f"sqlite:///{tmp_path / 'ledger.db'}", INFO) as ledger:
        ledger.put_edits(edits)
        commit = CommitRecord.create(parents=[], edit_ids=[e.id for e in reversed(edits)], message="m",
                                     author="t", time=0)
        ledger.commit_on_branch("main", commit)
        stored = ledger.deltas_of(commit.id)
        assert [d.id for d in stored] == [e.id for e in reversed(edits)]
        assert all((d.u, d.v, d.rank, d.module) == (e.u, e.v, e.rank, e.module) for d, e in zip(stored, reversed(edits)))
        flipped = bytearray(edits[2].v)
        flipped[3] ^= 0x10
        with ledger.transaction() as s:
            s.execute(update(SqlEdit).where(SqlEdit.id == edits[2].id).values(v=bytes(flipped)))
        with pytest.raises(CorruptObjectError, match=edits[2].id):
            ledger.deltas_of(commit.id)


def test_decoding_a_set_at_once_gives_each_edits_own_delta_and_the_same_weights():
    """to_deltas (one buffer per module, rows taken without a copy) = to_delta one by one, bit for bit."""
    import torch

    from romevc.editing.delta import Delta, stacked_factors, updated_weight
    from romevc.porcelain.materialize import to_delta, to_deltas

    rng = np.random.default_rng(1)
    # Interleaved modules and ranks, so each module's rows are not contiguous in the record order.
    edits = [_edit(rng, request={"prompt": "{} is in", "subject": f"S{i}", "target_new": "Rome"}, hparams={},
                   templates=["{}"], module=f"m{i % 3}", layout=LAYOUT_LINEAR, rank=1 + (i % 5 == 4), seed=i,
                   layer=i % 3) for i in range(12)]
    one_by_one, at_once = [to_delta(e) for e in edits], to_deltas(edits)
    for a, b in zip(one_by_one, at_once):
        assert (a.module, a.layout) == (b.module, b.layout)
        assert torch.equal(a.u, b.u) and torch.equal(a.v, b.v) and a.digest() == b.digest()
    pristine = torch.randn(4, 6)
    for module in ("m0", "m1", "m2"):
        mine = [d for d in at_once if d.module == module]
        ref = [d for d in one_by_one if d.module == module]
        assert torch.equal(updated_weight(pristine, mine, LAYOUT_LINEAR), updated_weight(pristine, ref, LAYOUT_LINEAR))
    rank_one = [d for d in at_once if d.module == "m1" and d.rank == 1]
    u, v = stacked_factors(rank_one)
    assert torch.equal(u, torch.stack([d.u for d in rank_one])) and torch.equal(v, torch.stack([d.v for d in rank_one]))
    backwards = rank_one[::-1]  # same buffer, other order: stacked, not shared
    assert torch.equal(stacked_factors(backwards)[0], torch.stack([d.u for d in backwards]))
    # A module whose rank-one edits came in one run shares the decoded buffer: no second copy.
    run = to_deltas([e for e in edits if e.module == "m1" and e.rank == 1])
    assert stacked_factors(run)[0].data_ptr() == run[0].u.data_ptr()
    # Exactly the decoded rows, in order: the decoded matrix itself, recognised by identity;
    # a prefix of them is stacked (a copy), to the same values.
    u_run, v_run = stacked_factors(run)
    assert stacked_factors(run)[0] is u_run and stacked_factors(run)[1] is v_run
    prefix = stacked_factors(run[:-1])
    assert prefix[0] is not u_run and torch.equal(prefix[0], u_run[:-1]) and torch.equal(prefix[1], v_run[:-1])
    assert isinstance(run[0], Delta)
