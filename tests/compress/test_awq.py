"""AWQ (llm/compress/awq.py): the scale search against its plain reference, exact folding,
and lower activation-weighted error than round-to-nearest on a tiny model's real activations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.compress import awq
from llm.compress.calibration import embed_inputs, layer_params, linear_inputs, run_layer
from llm.compress.spec import PtqSpec
from llm.config import ModelConfig
from llm.model import init_params
from llm.ops import quantized

GQA = dict(n_heads=4, n_kv_heads=2, activation="swiglu", norm="rmsnorm")
LAYERNORM_RELU = dict(
    n_heads=4, activation="relu", norm="layernorm", norm_bias=True, qkv_bias=True,
    out_bias=True, mlp_bias=True,
)  # fmt: skip


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=259, d_model=64, n_layers=2, d_ff=128, max_seq_len=64)
    return ModelConfig(**{**base, **kw})


def layer_and_inputs(cfg: ModelConfig, seed: int = 0, outliers: float = 1.0):
    """Layer 0 of an initialised model and what it reads for 4 x 32 random tokens. The
    norm scales (and every bias) are drawn log-normal / normal instead of ones / zeros:
    trained LLMs have a few large activation channels, the case AWQ is for."""
    key = jax.random.PRNGKey(seed)
    params = init_params(cfg, key)
    tokens = jax.random.randint(jax.random.fold_in(key, 1), (4, 32), 0, cfg.vocab_size)
    layer = layer_params(params, 0)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(layer)
    new = []
    for i, (path, leaf) in enumerate(leaves):
        name = str(path[-1].key)
        k = jax.random.fold_in(key, 100 + i)
        if name == "scale":
            leaf = jnp.exp(outliers * jax.random.normal(k, leaf.shape))
        elif name in ("b", "bias"):
            leaf = 0.1 * jax.random.normal(k, leaf.shape)
        new.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, new), embed_inputs(cfg, params, tokens)


def random_scales(cfg, key) -> list:
    """A positive scale per group, tied across the query heads of a KV head for v -> o."""
    out = []
    for i, group in enumerate(awq.scale_groups(cfg)):
        K = {"attn/o/w": cfg.n_heads * cfg.head_size, "mlp/down/w": cfg.d_ff}.get(
            group.linears[0], cfg.d_model
        )
        s = jnp.exp(jax.random.normal(jax.random.fold_in(key, i), (K,)))
        out.append((group, awq.tie_channels(s, group.tie)))
    return out


@pytest.mark.parametrize("kw", [GQA, LAYERNORM_RELU, {**GQA, "norm_placement": "post"}])
def test_folding_leaves_the_float_block_unchanged(kw):
    cfg = tiny(**kw)
    layer, x_BLD = layer_and_inputs(cfg)
    folded = layer
    for group, s_K in random_scales(cfg, jax.random.PRNGKey(7)):
        folded = awq.fold_scale(folded, group, s_K)
    ref = run_layer(cfg, layer, x_BLD)
    got = run_layer(cfg, folded, x_BLD)
    np.testing.assert_allclose(got, ref, atol=1e-5 * float(jnp.abs(ref).max()), rtol=0)
    # the scales did move weight between the ops (else the test above proves nothing)
    assert not np.allclose(folded["attn"]["o"]["w"], layer["attn"]["o"]["w"])


def test_scale_groups_follow_the_architecture():
    names = lambda cfg: [g.prev for g in awq.scale_groups(cfg)]  # noqa: E731
    assert names(tiny(**GQA)) == ["attn_norm", "attn/v", "mlp_norm", "mlp/up"]
    assert names(tiny(**{**GQA, "norm_placement": "post"})) == ["attn/v", "mlp/up"]
    assert names(tiny(n_heads=4, activation="gelu")) == ["attn_norm", "attn/v", "mlp_norm"]
    assert awq.scale_groups(tiny(**GQA))[1].tie == (2, 2, 16)
    assert awq.scale_groups(tiny(n_heads=4))[1].tie is None  # MHA: nothing to tie


@pytest.mark.parametrize("fmt,bits,group", [("int4", 4, 16), ("uint4", 3, 32), ("nf4", 4, 16),
                                            ("int8", 8, 0)])  # fmt: skip
def test_fake_quant_equals_quantize_dequantize_and_reference(fmt, bits, group):
    w_KN = jax.random.normal(jax.random.PRNGKey(3), (64, 48))
    q = quantized.quantize(w_KN, fmt=fmt, bits=bits, group=group, n_in=1, n_out=1)
    got = awq.fake_quant(w_KN, fmt, bits, group)
    np.testing.assert_array_equal(got, quantized.dequantize(q))
    # uint4's c * s + offset may fuse into one rounding: a few ulps of the offset (~2)
    np.testing.assert_allclose(awq.rtn_reference(np.asarray(w_KN), fmt, bits, group), got,
                               rtol=1e-6, atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("fmt,bits,group", [("int4", 4, 16), ("uint4", 3, 32), ("nf4", 4, 64)])
def test_scale_search_equals_reference(fmt, bits, group):
    cfg = tiny(**GQA)
    layer, x_BLD = layer_and_inputs(cfg)
    xs = linear_inputs(cfg, layer, x_BLD)
    spec = PtqSpec(method="awq", fmt=fmt, bits=bits, group=group, grid=10)
    for group_ in awq.scale_groups(cfg)[:2]:  # a norm group and the tied v -> o
        x_MK = xs[group_.linears[0]]
        ws = [awq.as_matrix(awq.get_path(layer, p), x_MK.shape[1]) for p in group_.linears]
        s_K, errors = awq.search_scale(x_MK, ws, spec, group_.tie)
        ref_s, ref_errors = awq.search_scale_reference(x_MK, ws, spec, group_.tie)
        np.testing.assert_allclose(errors, ref_errors, rtol=2e-4)
        np.testing.assert_allclose(s_K, ref_s, rtol=1e-5)


def output_error(cfg, float_layer, layer, x_BLD, spec) -> dict[str, float]:
    """||X' Q(W') - X W||^2 per Linear: X' what `layer` (folded, float) feeds the Linear."""
    xs, xs_ref = linear_inputs(cfg, layer, x_BLD), linear_inputs(cfg, float_layer, x_BLD)
    out = {}
    for path, (n_in, n_out) in awq.block_layouts(cfg).items():
        w = awq.get_path(layer, path)
        q = quantized.quantize(w, fmt=spec.fmt, bits=spec.bits, group=spec.group, n_in=n_in,
                               n_out=n_out)  # fmt: skip
        K = xs[path].shape[1]
        ref = xs_ref[path] @ awq.as_matrix(awq.get_path(float_layer, path), K)
        out[path] = float(jnp.sum((xs[path] @ quantized.dequantize(q).reshape(K, -1) - ref) ** 2))
    return out


@pytest.mark.parametrize("fmt,bits", [("int4", 4), ("int4", 3), ("uint4", 4)])
def test_awq_scales_reduce_the_activation_weighted_error(fmt, bits):
    """Each group's scales folded alone (its Linears' float outputs stay those of the float
    block): the output error of its Linears is never above RTN's, and clearly below it on
    the norm-fed groups, whose inputs carry the outlier channels."""
    cfg = tiny(**GQA)
    layer, x_BLD = layer_and_inputs(cfg)
    spec = PtqSpec(method="awq", fmt=fmt, bits=bits, group=32)
    rtn = output_error(cfg, layer, layer, x_BLD, spec)
    for group, s_K, errors in awq.awq_scales(cfg, layer, x_BLD, spec):
        assert float(errors.min()) <= float(errors[0])  # a = 0 (plain RTN) is on the grid
        got = output_error(cfg, layer, awq.fold_scale(layer, group, s_K), x_BLD, spec)
        awq_err = sum(got[p] for p in group.linears)
        rtn_err = sum(rtn[p] for p in group.linears)
        # the search's own estimate of the chosen scale's error is the measured one
        np.testing.assert_allclose(float(errors.min()), awq_err, rtol=1e-3)
        assert awq_err <= rtn_err * (1 + 1e-4), (group.prev, awq_err, rtn_err)
        if group.after_norm:
            assert awq_err < 0.9 * rtn_err, (group.prev, awq_err, rtn_err)


def test_awq_layer_quantizes_every_linear_and_beats_rtn_on_the_block_output():
    cfg = tiny(**GQA)
    layer, x_BLD = layer_and_inputs(cfg)
    spec = PtqSpec(method="awq", fmt="int4", bits=3, group=32)
    out = awq.awq_layer(cfg, layer, x_BLD, spec)
    for path, (n_in, n_out) in awq.block_layouts(cfg).items():
        q = awq.get_path(out, path)
        assert quantized.is_qarray(q) and (q.fmt, q.bits, q.group) == ("int4", 3, 32), path
        assert (q.n_in, q.n_out) == (n_in, n_out) and q.shape == awq.get_path(layer, path).shape
    rtn = awq.quantize_block(cfg, layer, fmt="int4", bits=3, group=32)
    ref = run_layer(cfg, layer, x_BLD)
    err = lambda lay: float(jnp.sum((run_layer(cfg, lay, x_BLD) - ref) ** 2))  # noqa: E731
    assert err(out) < err(rtn)


@pytest.mark.parametrize("fmt,bits", [("int4", 3), ("uint4", 4)])
def test_clip_search_equals_reference_and_clips_some_groups(fmt, bits):
    cfg = tiny(**GQA)
    layer, x_BLD = layer_and_inputs(cfg)
    spec = PtqSpec(method="awq", fmt=fmt, bits=bits, group=32)
    x_MK = linear_inputs(cfg, layer, x_BLD)["mlp/down/w"]
    w_KN = layer["mlp"]["down"]["w"]
    got = awq.clip_weight(x_MK, w_KN, spec)
    np.testing.assert_allclose(got, awq.clip_reference(x_MK, w_KN, spec), rtol=1e-6)
    errors = awq.clip_errors(x_MK, w_KN, fmt=fmt, bits=bits, group=32)
    assert bool((jnp.argmin(errors, axis=0) > 0).any())  # the search does clip somewhere
    assert float(jnp.abs(got).max()) <= float(jnp.abs(w_KN).max())


def test_clipping_lowers_the_block_output_error():
    cfg = tiny(**GQA)
    layer, x_BLD = layer_and_inputs(cfg)
    spec = PtqSpec(method="awq", fmt="int4", bits=3, group=32)
    ref = run_layer(cfg, layer, x_BLD)
    err = lambda lay: float(jnp.sum((run_layer(cfg, lay, x_BLD) - ref) ** 2))  # noqa: E731
    clipped = err(awq.awq_layer(cfg, layer, x_BLD, spec))
    assert clipped < err(awq.awq_layer(cfg, layer, x_BLD, spec, clip=False))
