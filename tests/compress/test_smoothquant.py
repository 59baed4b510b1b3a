"""SmoothQuant (llm/compress/smoothquant.py): the smoothing formula, an unchanged float block
after folding, the W8A8 product against plain numpy, and lower W8A8 error than unsmoothed."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.compress import awq, smoothquant
from llm.compress.calibration import embed_inputs, layer_params, run_layer
from llm.compress.spec import PtqSpec
from llm.config import ModelConfig
from llm.model import init_params
from llm.ops import quantized

SPEC = PtqSpec(method="smoothquant", fmt="int8", bits=8, group=0, alpha=0.5)


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=259, d_model=64, n_layers=2, d_ff=128, max_seq_len=64, n_heads=4)
    return ModelConfig(**{**base, **kw})


def layer_and_inputs(cfg: ModelConfig, seed: int = 0):
    """Layer 0 of an initialised model and its input on random tokens; the norm scales are
    drawn log-normal (std 2) so a few channels carry most of the activation, as in trained
    LLMs (SmoothQuant sec. 3), and the biases normal instead of zero."""
    key = jax.random.PRNGKey(seed)
    params = init_params(cfg, key)
    tokens = jax.random.randint(jax.random.fold_in(key, 1), (4, 32), 0, cfg.vocab_size)
    layer = layer_params(params, 0)

    def redraw(path, leaf):
        k = jax.random.fold_in(key, zlib.crc32(jax.tree_util.keystr(path).encode()))
        name = str(path[-1].key)
        if name == "scale":
            return jnp.exp(2.0 * jax.random.normal(k, leaf.shape))
        return 0.1 * jax.random.normal(k, leaf.shape) if name in ("b", "bias") else leaf

    return jax.tree_util.tree_map_with_path(redraw, layer), embed_inputs(cfg, params, tokens)


def test_smoothing_scale_formula():
    # eq. 4 by hand: s = max|X|^a / max|W|^(1-a); a zero maximum leaves the channel alone
    x_max = jnp.array([4.0, 1.0, 9.0, 0.0])
    w_max = jnp.array([1.0, 4.0, 1.0, 2.0])
    np.testing.assert_allclose(smoothquant.smoothing_scale(x_max, w_max, 0.5), [2, 0.5, 3, 1])
    np.testing.assert_allclose(smoothquant.smoothing_scale(x_max, w_max, 1.0), [4, 1, 9, 1])
    # at alpha 0.5 both sides end with the same per-channel maximum, sqrt(max|X| max|W|)
    s = smoothquant.smoothing_scale(x_max[:3], w_max[:3], 0.5)
    np.testing.assert_allclose(x_max[:3] / s, w_max[:3] * s)


@pytest.mark.parametrize(
    "kw",
    [
        dict(n_kv_heads=2, activation="swiglu", norm="rmsnorm"),
        dict(activation="gelu", norm="layernorm", norm_bias=True, qkv_bias=True, mlp_bias=True),
    ],
)
def test_smoothing_leaves_the_float_block_unchanged(kw):
    cfg = tiny(**kw)
    layer, x_BLD = layer_and_inputs(cfg)
    folded = layer
    scales = smoothquant.smoothquant_scales(cfg, layer, x_BLD, SPEC)
    assert [g.prev for g, _ in scales] == ["attn_norm", "mlp_norm"]
    for group, s_K in scales:
        folded = awq.fold_scale(folded, group, s_K)
    ref = run_layer(cfg, layer, x_BLD)
    np.testing.assert_allclose(run_layer(cfg, folded, x_BLD), ref,
                               atol=1e-5 * float(jnp.abs(ref).max()), rtol=0)  # fmt: skip
    assert not np.allclose(folded["attn_norm"]["scale"], layer["attn_norm"]["scale"])


def test_w8a8_matmul_equals_numpy_reference():
    key = jax.random.PRNGKey(0)
    w_KN = jax.random.normal(key, (96, 40))
    x_MK = jax.random.normal(jax.random.fold_in(key, 1), (24, 96))
    x_MK = x_MK.at[:, 5].multiply(30.0).at[3].set(0.0)  # an outlier channel and a zero row
    q = quantized.quantize(w_KN, fmt="int8", bits=8, group=0, n_in=1, n_out=1, act_bits=8)
    got = np.asarray(quantized.matmul(x_MK, q))
    ref = smoothquant.w8a8_matmul_reference(np.asarray(x_MK), q)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    assert np.all(got[3] == 0)
    # and it is not the weight-only product: the activations were rounded too
    weight_only = np.asarray(x_MK) @ np.asarray(quantized.dequantize(q))
    assert np.abs(got - weight_only).max() > 1e-3


def test_smoothquant_layer_is_w8a8_and_beats_unsmoothed_w8a8():
    cfg = tiny(n_kv_heads=2, activation="swiglu", norm="rmsnorm")
    layer, x_BLD = layer_and_inputs(cfg)
    out = smoothquant.smoothquant_layer(cfg, layer, x_BLD, SPEC)
    for path in awq.block_layouts(cfg):
        q = awq.get_path(out, path)
        assert (q.fmt, q.bits, q.group, q.act_bits) == ("int8", 8, q.K, 8), path
    plain = awq.quantize_block(cfg, layer, fmt="int8", bits=8, group=0, act_bits=8)
    ref = run_layer(cfg, layer, x_BLD)
    err = lambda lay: float(jnp.sum((run_layer(cfg, lay, x_BLD) - ref) ** 2))  # noqa: E731
    assert err(out) < 0.5 * err(plain), (err(out), err(plain))


def test_smoothquant_refuses_a_4_bit_spec():
    with pytest.raises(ValueError, match="W8A8"):  # refused before any work
        smoothquant.smoothquant_layer(tiny(), {}, jnp.zeros((1, 2, 64)), PtqSpec(method="awq"))
