"""The architecture table, the fast path and the ROME update on a tiny random model of every family."""
from __future__ import annotations

import pytest
import torch
import transformers

from romevc.architectures import (LAYOUT_CONV1D, LAYOUT_LINEAR, ARCHITECTURES, architecture_for, as_out_in,
                                  check_layer)
from romevc.editing import delta as deltas
from romevc.editing import forward
from romevc.editing.hparams import RomeHyperParams
from romevc.editing.request import EditRequest
from romevc.editing.rome import build_prompts, compute_edit, optimise_value
from romevc.errors import LayerOutOfRangeError, UnsupportedArchitectureError
from tests.conftest import tiny_tokenizer

D_MODEL, D_FF, N_LAYERS = 32, 48, 3  # d_ff ≠ d_model, so a transposed layout cannot pass by accident
TEMPLATES = ((3, 2),)  # two short context prefixes keep the tests fast


def _config(family: str, vocab: int):
    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=1, pad_token_id=1)
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=D_MODEL, n_inner=D_FF, n_layer=N_LAYERS, n_head=4, n_positions=64,
                                       resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, **common)
    if family == "gptj":
        return transformers.GPTJConfig(n_embd=D_MODEL, n_inner=D_FF, n_layer=N_LAYERS, n_head=4, rotary_dim=4,
                                       n_positions=64, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, **common)
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=N_LAYERS,
                                          num_attention_heads=4, max_position_embeddings=64, **common)
    llama_like = dict(hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=N_LAYERS,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **common)
    if family == "llama":
        return transformers.LlamaConfig(**llama_like)
    if family == "qwen2":
        return transformers.Qwen2Config(**llama_like)
    if family == "mistral":
        return transformers.MistralConfig(sliding_window=None, **llama_like)
    if family == "gemma3_text":
        return transformers.Gemma3TextConfig(head_dim=8, sliding_window=4, layer_types=[
            "sliding_attention", "full_attention", "sliding_attention"], **llama_like)
    raise AssertionError(family)


def tiny_model(family: str):
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_config(family, len(tokenizer)))
    return model.eval(), tokenizer


FAMILIES = sorted(ARCHITECTURES)
REQUEST = EditRequest("{} lives in the city of", "Tomas Varek", "Rome")


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    return (request.param, *tiny_model(request.param))


def test_table_names_real_modules(family_model):
    family, model, _ = family_model
    arch = architecture_for(model)
    assert arch.family == family
    for name in (arch.layers, arch.final_norm, arch.head, arch.embed):
        model.get_submodule(name)
    block = model.get_submodule(arch.layer_prefix(1))
    block.get_submodule(arch.mlp)
    block.get_submodule(arch.attention)
    weight = model.get_submodule(arch.edited_module_name(1)).weight
    expected = (D_FF, D_MODEL) if arch.layout == LAYOUT_CONV1D else (D_MODEL, D_FF)
    assert tuple(weight.shape) == expected
    assert as_out_in(weight, arch.layout).shape == (D_MODEL, D_FF)
    assert arch.layout == (LAYOUT_CONV1D if family == "gpt2" else LAYOUT_LINEAR)


def test_unknown_architecture_names_supported_ones():
    config = transformers.BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=8)
    with pytest.raises(UnsupportedArchitectureError, match="supported: gemma3_text, gpt2, gpt_neox, gptj"):
        architecture_for(transformers.BertModel(config))


def test_layer_out_of_range(family_model):
    _, model, _ = family_model
    with pytest.raises(LayerOutOfRangeError, match=r"layers 0\.\.2"):
        check_layer(model, 3)


def test_fast_path_matches_full_forward(family_model):
    """Running layers l.. from cached inputs gives the full model's final hidden states."""
    _, model, tokenizer = family_model
    arch = architecture_for(model)
    prompts = build_prompts(tokenizer, REQUEST, ("{}", "The cold . {}"), "{} is a")
    batch = prompts.batch
    with torch.no_grad():
        full = model.get_submodule(arch.layers.rpartition(".")[0])(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        capture = forward.capture_at_layer(model, arch, 1, batch)
        fast = forward.run_from_layer(model, arch, 1, capture.layer_input, batch.attention_mask)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(fast[real], full[real], rtol=1e-4, atol=1e-5)


def test_suffix_stack_matches_whole_rows(family_model):
    """From the subject on, the cached-prefix stack gives the whole-row stack's hidden states."""
    _, model, tokenizer = family_model
    if not forward.suffix_supported(model):
        pytest.skip("sliding-window attention runs whole rows")
    arch = architecture_for(model)
    prompts = build_prompts(tokenizer, REQUEST, ("{}", "The cold . {}", "A b c d e f. {}"), "{} is a")
    batch = prompts.batch
    lengths = batch.attention_mask.sum(1)
    for layer in range(N_LAYERS):
        with torch.no_grad():
            capture = forward.capture_at_layer(model, arch, layer, batch)
            whole = forward.run_from_layer(model, arch, layer, capture.layer_input, batch.attention_mask)
            stack = forward.SuffixStack(model, arch, layer, capture.layer_input, batch)
            suffix = stack.run()
        assert stack.split == int(batch.subject_positions.max()) > 0
        assert suffix.shape[1] < whole.shape[1]  # the point: fewer columns per step
        for row, (subject, length) in enumerate(zip(batch.subject_positions.tolist(), lengths.tolist())):
            torch.testing.assert_close(suffix[row, : length - subject], whole[row, subject:length],
                                       rtol=1e-5, atol=1e-6)


def test_suffix_stack_gives_the_whole_row_value(family_model, monkeypatch):
    """The optimised δ is the same whether each step runs whole rows or only the suffix."""
    _, model, tokenizer = family_model
    if not forward.suffix_supported(model):
        pytest.skip("sliding-window attention runs whole rows")
    arch = architecture_for(model)
    prompts = build_prompts(tokenizer, REQUEST, ("{}", "The cold . {}"), "{} is a")
    capture = forward.capture_at_layer(model, arch, 1, prompts.batch)
    hp = RomeHyperParams(layer=1, v_steps=5)
    base_value = capture.values[: prompts.n_rewrite].mean(0)
    with_suffix, losses = optimise_value(model, arch, 1, prompts, capture, base_value, hp)
    monkeypatch.setattr(forward, "suffix_supported", lambda _model: False)
    whole_rows, whole_losses = optimise_value(model, arch, 1, prompts, capture, base_value, hp)
    assert len(losses) == len(whole_losses)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(whole_losses), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(with_suffix, whole_rows, rtol=1e-3, atol=1e-5)


@pytest.fixture(scope="module")
def family_edit(family_model, tmp_path_factory):
    from romevc.editing.stats import StatsCache
    from tests.conftest import TINY_GPT2

    family, model, tokenizer = family_model
    stats = StatsCache(root=tmp_path_factory.mktemp(f"stats-{family}"), corpus=str(TINY_GPT2 / "corpus.txt"),
                       n_tokens=2000, progress=False)
    hp = RomeHyperParams(layer=1, templates=TEMPLATES, v_steps=5)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = compute_edit(model, tokenizer, REQUEST, hp, stats=stats)
    return model, tokenizer, hp, stats, result, before


def test_compute_leaves_model_unchanged(family_edit):
    model, *_, before = family_edit
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name
        assert param.requires_grad  # frozen only while δ is optimised


def test_edit_maps_key_to_value_with_rank_one_change(family_edit):
    """(W + ΔW) k̄ + b = W k̄ + b + v: the edited module sends the averaged key to v*."""
    model, tokenizer, hp, _, result, before = family_edit
    arch = architecture_for(model)
    prompts = build_prompts(tokenizer, REQUEST, result.templates, hp.kl_prompt)
    original = forward.capture_at_layer(model, arch, 1, prompts.batch)
    n = prompts.n_rewrite
    deltas.apply(model, [result.delta])
    try:
        edited = forward.capture_at_layer(model, arch, 1, prompts.batch)
        changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
        weight_change = as_out_in(model.get_submodule(result.module).weight - before[result.module + ".weight"],
                                  arch.layout)
    finally:
        deltas.restore(model)
    assert changed == [result.module + ".weight"]  # no other parameter moved
    assert torch.linalg.matrix_rank(weight_change.double(), rtol=1e-6).item() == 1
    mean_key = original.keys[:n].mean(0)
    module = model.get_submodule(result.module)
    with torch.no_grad():
        deltas.apply(model, [result.delta])
        v_star_reached = module(mean_key[None].to(module.weight.dtype))[0].float()
        deltas.restore(model)
        v_star = module(mean_key[None])[0].float() + result.delta.v
    assert torch.allclose(edited.keys, original.keys)  # the key is upstream of the edit
    rel = (v_star_reached - v_star).norm() / v_star.norm()
    assert rel < 1e-4


def test_prompt_key_edit_also_maps_the_bare_prompt_key(family_edit):
    """With ``prompt_key`` (the default) the bare prompt's own key k₀ reaches W k₀ + b + δ too."""
    model, tokenizer, hp, _, result, _ = family_edit
    assert hp.prompt_key and result.hparams["prompt_key"] is True
    prompts = build_prompts(tokenizer, REQUEST, result.templates, hp.kl_prompt)
    bare_key = forward.capture_at_layer(model, architecture_for(model), 1, prompts.batch).keys[0]
    module = model.get_submodule(result.module)
    with torch.no_grad():
        wanted = module(bare_key[None])[0].float() + result.delta.v
        deltas.apply(model, [result.delta])
        try:
            reached = module(bare_key[None])[0].float()
        finally:
            deltas.restore(model)
    assert (reached - wanted).norm() / wanted.norm() < 1e-4


def test_same_seed_gives_identical_delta(family_edit):
    model, tokenizer, hp, stats, result, _ = family_edit
    again = compute_edit(model, tokenizer, REQUEST, hp, stats=stats)
    assert again.templates == result.templates
    assert torch.equal(again.delta.u, result.delta.u) and torch.equal(again.delta.v, result.delta.v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_apply_restore_is_bit_exact(family_edit, dtype):
    model, *_, result, _ = family_edit
    model = model.to(dtype)
    try:
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        deltas.apply(model, [result.delta, result.delta])
        assert not torch.equal(model.get_submodule(result.module).weight, before[result.module + ".weight"])
        deltas.restore(model)
        for name, param in model.named_parameters():
            assert torch.equal(param, before[name]), name
    finally:
        model.to(torch.float32)
