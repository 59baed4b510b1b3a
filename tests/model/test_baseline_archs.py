"""Every classical baseline (`model.arch`: ngram_mlp, rnn, lstm, gru) through the model-level
stack: exact parameter counts and FLOPs (llm/model/accounting.py), logical axes every
sharding preset can lay out, incremental greedy decoding equal to the full forward, and the
Transformer-only features refused by name."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from llm.config import ModelConfig
from llm.config.peft import PeftConfig
from llm.interop.gguf_export import check_exportable
from llm.interop.hf_config import UnsupportedConfig, hf_model_type
from llm.model import abstract_params, accounting, logical_axes
from llm.model import forward as eager_forward
from llm.model.cache import init_cache
from llm.model.quantized import quantize_params
from llm.peft import METHODS
from llm.sharding.rules import PRESETS, mesh_spec
from llm.train.optim import muon_dimensions

forward = jax.jit(eager_forward, static_argnums=0)
V, D, F, C, Y = 37, 16, 24, 3, 2
CFGS = {
    "ngram_mlp": ModelConfig(arch="ngram_mlp", vocab_size=V, d_model=D, d_ff=F, n_layers=Y,
                             ngram_context=C, ngram_direct=True, tie_embeddings=False),
    "rnn": ModelConfig(arch="rnn", vocab_size=V, d_model=D, n_layers=Y),
    "lstm": ModelConfig(arch="lstm", vocab_size=V, d_model=D, n_layers=Y, tie_embeddings=False),
    "gru": ModelConfig(arch="gru", vocab_size=V, d_model=D, n_layers=Y),
}  # fmt: skip
TORCH_CELLS = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def random_params(cfg):
    """NumPy-drawn params of `cfg`'s structure (std 0.3): no XLA compile of random draws."""
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda x: jnp.asarray(rng.normal(0, 0.3, x.shape), x.dtype), abstract_params(cfg)
    )


def expected_total(arch: str) -> int:
    """Parameter totals from the papers' definitions; the recurrent layers counted by torch
    itself (nn.RNN / nn.LSTM / nn.GRU with hidden = input = d_model, two biases per gate)."""
    cfg = CFGS[arch]
    if arch == "ngram_mlp":
        # C table + empty slot; H, d; deep tanh layer; U, b; direct W (Bengio et al. 2003)
        return V * D + D + (C * D * F + F) + (F * F + F) + (F * V + V) + C * D * V
    layers = TORCH_CELLS[arch](D, D, num_layers=Y)
    head = 0 if cfg.tie_embeddings else D * V
    return V * D + sum(p.numel() for p in layers.parameters()) + head


@pytest.mark.parametrize("arch", CFGS)
def test_param_counts_equal_the_leaves_and_the_definition(arch):
    cfg = CFGS[arch]
    leaves = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params(cfg)))
    counts = accounting.param_counts(cfg)
    assert counts.total == leaves == expected_total(arch)
    assert counts.embedding + counts.non_embedding == counts.total


@pytest.mark.parametrize("arch", CFGS)
def test_forward_flops_per_token_formula(arch):
    """2 x every weight matrix's elements (the docstring's formula), independent of length."""
    cfg = CFGS[arch]
    if arch == "ngram_mlp":
        weights = C * D * F + F * F + F * V + C * D * V
    else:  # per layer G (D x D input + D x D recurrent) matrices, then the output layer
        weights = Y * GATES[arch] * 2 * D * D + D * V
    assert accounting.forward_flops_per_token(cfg, 64) == 2 * weights
    assert accounting.forward_flops_per_token(cfg, 8) == 2 * weights
    assert accounting.train_flops_per_token(cfg, 64) == 6 * weights


def test_ngram_mlp_flops_agree_with_xla():
    """XLA counts every op (tanh, bias adds), we count matmuls: XLA is 0-5% above us."""
    cfg = ModelConfig(arch="ngram_mlp", vocab_size=512, d_model=64, d_ff=256, n_layers=2,
                      ngram_context=4, tie_embeddings=False)  # fmt: skip
    B, L = 2, 64
    lowered = jax.jit(lambda p, t: eager_forward(cfg, p, t).logits_BLV).lower(
        abstract_params(cfg), jax.ShapeDtypeStruct((B, L), jnp.int32)
    )
    analysis = lowered.compile().cost_analysis()
    xla = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
    ours = accounting.forward_flops_per_token(cfg, L) * B * L
    assert 1.0 <= xla / ours <= 1.05, (xla, ours)


@pytest.mark.parametrize("arch", CFGS)
def test_every_sharding_preset_lays_out_the_params(arch):
    specs = jax.tree.leaves(logical_axes(CFGS[arch]), is_leaf=lambda x: x is None or
                            isinstance(x, jax.sharding.PartitionSpec))  # fmt: skip
    assert specs
    for rules in PRESETS.values():
        for spec in specs:
            mesh_spec(rules, spec)  # raises on an unknown name or a mesh axis used twice


@pytest.mark.parametrize("arch", CFGS)
def test_greedy_decoding_with_the_cache_equals_argmax_of_the_full_forward(arch):
    """Prompt of 3 through the cache, then greedy tokens one at a time; a full forward over
    the final sequence (causal, so its logits at t read tokens <= t only) has the same
    logits at every step and its argmax at t is token t + 1."""
    cfg, params = CFGS[arch], random_params(CFGS[arch])
    seq = [1, 5, 9]
    out = forward(cfg, params, jnp.array([seq]), cache=init_cache(cfg, 1, 16))
    steps = [out.logits_BLV[0, -1]]
    for _ in range(5):
        seq.append(int(jnp.argmax(steps[-1])))
        out = forward(cfg, params, jnp.array([seq[-1:]]), cache=out.cache)
        steps.append(out.logits_BLV[0, -1])
    assert int(out.cache.lengths_B[0]) == len(seq)
    full = forward(cfg, params, jnp.array([seq])).logits_BLV[0, 2:]
    np.testing.assert_allclose(jnp.stack(steps), full, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(jnp.argmax(full[:-1], -1), seq[3:])


@pytest.mark.parametrize("arch", CFGS)
def test_transformer_only_features_are_refused_by_name(arch):
    cfg = CFGS[arch]
    abstract, axes = abstract_params(cfg), logical_axes(cfg)
    for method in ("lora", "prefix", "adapter", "ia3"):
        with pytest.raises(ValueError, match=f"peft.method={method} adapts a Transformer"):
            METHODS[method].axes(PeftConfig(method=method), abstract, axes)
    with pytest.raises(ValueError, match=f"Linear layers; model.arch='{arch}'"):
        quantize_params(cfg, abstract, fmt="int", bits=8, group=0)
    with pytest.raises(UnsupportedConfig, match="Hugging Face export"):
        hf_model_type(cfg)
    with pytest.raises(UnsupportedConfig, match="GGUF export"):
        check_exportable(cfg)


def test_int8_kv_cache_is_refused():
    """ngram_mlp caches token ids: nothing to quantize (the recurrent cache's refusal is
    tested in tests/model/test_recurrent_cache.py)."""
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        init_cache(dataclasses.replace(CFGS["ngram_mlp"], kv_cache_dtype="int8"), 1, 8)


def test_llm_model_prints_a_baselines_counts(capsys):
    from llm.cli import main

    assert main(["model", "model.arch=lstm", "model.d_model=16", "model.n_layers=2"]) == 0
    lstm = ModelConfig(arch="lstm", d_model=16, n_layers=2)
    text = capsys.readouterr().out
    assert f"{accounting.param_counts(lstm).total:,}" in text
    assert "lstm, no attention" in text


def test_muon_orthogonalises_the_ngram_window_weight_as_a_context_embed_by_hidden_matrix():
    """The window weight [C, D, F] (axes None, embed, mlp) maps the C D concatenated
    embeddings to F: Muon must reduce over (C, D), not orthogonalise (C F) x D."""
    cfg = CFGS["ngram_mlp"]
    dims = muon_dimensions(abstract_params(cfg), logical_axes(cfg))
    assert tuple(dims["hidden_w"].reduction_axis) == (0, 1)
    assert tuple(dims["hidden_w"].output_axis) == (2,)
