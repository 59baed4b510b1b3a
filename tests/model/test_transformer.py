"""Every architectural switch builds, trains (finite grads) and really changes the computation.

Where a switch has an exact mathematical equivalent we test that (GQA = MHA with repeated
K/V heads, linear RoPE scaling = positions divided by the factor, ...); otherwise we check
that it changes outputs on the same parameters.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.model import forward, init_params
from tests.model.conftest import make_cfg, params_for


@functools.cache
def _jitted_logits(cfg):
    """One compiled forward per config (XLA compiles take seconds on this CPU)."""
    return jax.jit(lambda p, t, kw: forward(cfg, p, t, **kw).logits_BLV)


def logits(cfg, params, tokens, **kw):
    return _jitted_logits(cfg)(params, tokens, kw)


@functools.cache
def _jitted_loss_and_grads(cfg):
    def loss(p, tokens, dropout_key):
        out = forward(cfg, p, tokens, dropout_key=dropout_key)
        logp = jax.nn.log_softmax(out.logits_BLV.astype(jnp.float32))
        return -jnp.take_along_axis(logp[:, :-1], tokens[:, 1:, None], -1).mean()

    return jax.jit(jax.value_and_grad(loss))


def loss_and_grads(cfg, params, tokens, dropout_key=None):
    return _jitted_loss_and_grads(cfg)(params, tokens, dropout_key)


def assert_finite_training(cfg, params, tokens, dropout_key=None):
    value, grads = loss_and_grads(cfg, params, tokens, dropout_key)
    assert np.isfinite(float(value))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert bool(jnp.isfinite(g).all()), path
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    return value


def differs(a, b, threshold=1e-4):
    return float(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).max()) > threshold


# Switches that leave the parameter structure unchanged: compared on the same params.
SAME_PARAMS_GROUPS = {
    "pos_encoding": [{"pos_encoding": p} for p in ("rope", "alibi", "sinusoidal", "none")],
    "rope_scaling": [
        {"pos_encoding": "rope"},
        {"pos_encoding": "rope", "rope_scaling": "linear", "rope_scaling_factor": 4.0},
        {
            "pos_encoding": "rope",
            "rope_scaling": "llama3",
            "rope_scaling_factor": 8.0,
            "rope_original_max_len": 8,
            "rope_theta": 100.0,
        },
    ],
    "activation": [{"activation": a} for a in ("relu", "gelu", "gelu_tanh")],
    "gated_activation": [{"activation": a} for a in ("swiglu", "geglu")],
    "sliding_window": [{}, {"sliding_window": 2}],
    "softcap": [{}, {"attn_logit_softcap": 0.5}],
    "dtype": [{}, {"dtype": "bfloat16"}],
}


@pytest.mark.parametrize("group", SAME_PARAMS_GROUPS)
def test_switch_changes_output_on_same_params(group, tokens_BL):
    variants = SAME_PARAMS_GROUPS[group]
    params = params_for(make_cfg(**variants[0]))
    outs = []
    for overrides in variants:
        cfg = make_cfg(**overrides)
        assert_finite_training(cfg, params, tokens_BL)
        outs.append(logits(cfg, params, tokens_BL))
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert differs(outs[i], outs[j]), (group, variants[i], variants[j])


def test_gqa_and_mqa_equal_mha_with_repeated_kv_heads(tokens_BL):
    mha = make_cfg(pos_encoding="rope")
    mha_params = params_for(mha)
    for kv_heads in (2, 1):
        cfg = make_cfg(pos_encoding="rope", n_kv_heads=kv_heads)
        params = params_for(cfg)
        assert_finite_training(cfg, params, tokens_BL)
        group = mha.n_heads // kv_heads
        repeated = jax.tree.map(lambda x: x, params)
        for name in ("k", "v"):
            w = params["blocks"]["attn"][name]["w"]  # [Y, D, K, H]
            repeated["blocks"]["attn"][name]["w"] = jnp.repeat(w, group, axis=2)
        assert jax.tree.structure(repeated) == jax.tree.structure(mha_params)
        np.testing.assert_allclose(
            logits(cfg, params, tokens_BL), logits(mha, repeated, tokens_BL), rtol=1e-5, atol=1e-5
        )


def test_sliding_window_wider_than_sequence_is_full_attention(tokens_BL):
    params = params_for(make_cfg())
    wide = logits(make_cfg(sliding_window=tokens_BL.shape[1]), params, tokens_BL)
    np.testing.assert_allclose(wide, logits(make_cfg(), params, tokens_BL), rtol=1e-6, atol=1e-6)


def test_jax_attention_impl_matches_xla_reference(tokens_BL):
    for overrides in ({"pos_encoding": "alibi", "n_kv_heads": 2}, {"sliding_window": 3}):
        params = params_for(make_cfg(**overrides))
        ref = logits(make_cfg(**overrides), params, tokens_BL)
        got = logits(make_cfg(attention_impl="jax", **overrides), params, tokens_BL)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_linear_rope_scaling_equals_scaled_positions(tokens_BL):
    base = make_cfg(pos_encoding="rope")
    scaled = make_cfg(pos_encoding="rope", rope_scaling="linear", rope_scaling_factor=4.0)
    params = params_for(base)
    positions = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)
    got = logits(scaled, params, tokens_BL, positions_BL=positions * 4)
    want = logits(base, params, tokens_BL, positions_BL=positions)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_qk_norm_makes_attention_invariant_to_query_scale(tokens_BL):
    for qk_norm in (True, False):
        cfg = make_cfg(qk_norm=qk_norm, pos_encoding="rope")
        params = params_for(cfg)
        if qk_norm:
            assert_finite_training(cfg, params, tokens_BL)
        scaled = jax.tree.map(lambda x: x, params)
        scaled["blocks"]["attn"]["q"]["w"] = params["blocks"]["attn"]["q"]["w"] * 10.0
        a, b = logits(cfg, params, tokens_BL), logits(cfg, scaled, tokens_BL)
        if qk_norm:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        else:
            assert differs(a, b)


def test_post_norm_differs_from_pre_norm_on_same_block_params(tokens_BL):
    pre = make_cfg()
    params = params_for(pre)
    post = make_cfg(norm_placement="post")
    post_params = {k: v for k, v in params.items() if k != "final_norm"}
    assert_finite_training(post, post_params, tokens_BL)
    assert differs(logits(pre, params, tokens_BL), logits(post, post_params, tokens_BL))


def test_rmsnorm_differs_from_bias_free_layernorm(tokens_BL):
    ln = make_cfg(norm_bias=False)
    params = params_for(ln)
    rms = make_cfg(norm="rmsnorm")
    assert_finite_training(rms, params, tokens_BL)
    assert differs(logits(ln, params, tokens_BL), logits(rms, params, tokens_BL))


def test_untied_head_equal_to_embedding_matches_tied(tokens_BL):
    tied = make_cfg()
    params = params_for(tied)
    untied = make_cfg(tie_embeddings=False)
    untied_params = dict(params, lm_head=params["token_embed"].T)
    assert_finite_training(untied, untied_params, tokens_BL)
    np.testing.assert_allclose(
        logits(untied, untied_params, tokens_BL), logits(tied, params, tokens_BL), rtol=1e-6
    )


def test_biases_are_used(tokens_BL):
    cfg = make_cfg(qkv_bias=True, out_bias=True, mlp_bias=True)
    params = params_for(cfg)
    assert_finite_training(cfg, params, tokens_BL)
    before = logits(cfg, params, tokens_BL)
    for i, path in enumerate((("attn", "q"), ("attn", "o"), ("mlp", "up"), ("mlp", "down"))):
        bumped = jax.tree.map(lambda x: x, params)
        node = bumped["blocks"]
        for key in path:
            node = node[key]
        # A random (not constant) bump: LayerNorm would cancel a constant shift of the residual.
        node["b"] = node["b"] + jax.random.normal(jax.random.key(i), node["b"].shape)
        assert differs(before, logits(cfg, bumped, tokens_BL)), path


def test_dropout_only_with_a_key(tokens_BL):
    cfg = make_cfg(embed_dropout=0.2, attn_dropout=0.2, resid_dropout=0.2)
    params = params_for(cfg)
    assert_finite_training(cfg, params, tokens_BL, dropout_key=jax.random.key(1))
    plain = logits(make_cfg(), params, tokens_BL)
    np.testing.assert_allclose(logits(cfg, params, tokens_BL), plain, rtol=1e-6)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    a = logits(cfg, params, tokens_BL, dropout_key=k1)
    assert differs(a, plain) and differs(a, logits(cfg, params, tokens_BL, dropout_key=k2))
    np.testing.assert_array_equal(a, logits(cfg, params, tokens_BL, dropout_key=k1))


def test_remat_keeps_gradients_and_inserts_checkpoint(tokens_BL):
    params = params_for(make_cfg())
    ref_loss, ref_grads = loss_and_grads(make_cfg(), params, tokens_BL)
    for policy in ("full", "dots"):
        cfg = make_cfg(remat=policy)
        value, grads = loss_and_grads(cfg, params, tokens_BL)
        np.testing.assert_allclose(value, ref_loss, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        jaxpr = str(jax.make_jaxpr(lambda p, c=cfg: forward(c, p, tokens_BL).logits_BLV)(params))
        assert "checkpoint" in jaxpr or "remat" in jaxpr
    assert "checkpoint" not in str(
        jax.make_jaxpr(lambda p: forward(make_cfg(), p, tokens_BL).logits_BLV)(params)
    )


def test_unrolled_layers_equal_the_scan(tokens_BL):
    """`scan_layers=False` runs the same stacked params in a Python loop: same loss, grads,
    hidden states; and the jaxpr has no scan left."""
    params = params_for(make_cfg())
    ref_loss, ref_grads = loss_and_grads(make_cfg(), params, tokens_BL)
    cfg = make_cfg(scan_layers=False)
    value, grads = loss_and_grads(cfg, params, tokens_BL)
    np.testing.assert_allclose(value, ref_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    hidden = forward(cfg, params, tokens_BL, return_hidden_states=True).hidden_states
    want = forward(make_cfg(), params, tokens_BL, return_hidden_states=True).hidden_states
    np.testing.assert_allclose(hidden, want, rtol=1e-5, atol=1e-6)
    jaxpr = jax.make_jaxpr(lambda p: forward(cfg, p, tokens_BL).logits_BLV)(params)
    assert "scan" not in str(jaxpr)


def test_decode_layout_equals_the_stacked_params(tokens_BL):
    """`unstack_layers` params give the same logits, with and without a KV cache."""
    from llm.model import unstack_layers
    from llm.model.kv_cache import init_cache

    cfg = make_cfg()
    params = params_for(cfg)
    per_layer = unstack_layers(params)
    assert len(per_layer["blocks"]) == cfg.n_layers
    assert unstack_layers(per_layer) is per_layer
    np.testing.assert_allclose(
        logits(cfg, per_layer, tokens_BL), logits(cfg, params, tokens_BL), rtol=1e-6, atol=1e-6
    )
    B = tokens_BL.shape[0]
    cached = [forward(cfg, p, tokens_BL, cache=init_cache(cfg, B, 32)) for p in (params, per_layer)]
    np.testing.assert_allclose(cached[1].logits_BLV, cached[0].logits_BLV, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cached[1].cache.k_YBKSH, cached[0].cache.k_YBKSH, atol=1e-6)
    with pytest.raises(ValueError, match="params hold 1 layers; the config has"):
        forward(cfg, {**per_layer, "blocks": per_layer["blocks"][:1]}, tokens_BL)


def test_param_dtype_and_dtype_are_separate(tokens_BL):
    cfg = make_cfg(param_dtype="bfloat16", dtype="float32")
    params = init_params(cfg, jax.random.key(0))
    assert {str(x.dtype) for x in jax.tree.leaves(params)} == {"bfloat16"}
    assert logits(cfg, params, tokens_BL).dtype == jnp.float32
    half = make_cfg(dtype="bfloat16")
    assert logits(half, params_for(half), tokens_BL).dtype == jnp.bfloat16


def test_residual_projections_scaled_at_init():
    cfg = make_cfg(d_model=128, d_ff=256, n_layers=8, init_std=0.02)
    params = init_params(cfg, jax.random.key(0))
    attn = params["blocks"]["attn"]
    expected_out_std = 0.02 / np.sqrt(2 * cfg.n_layers)
    assert abs(float(attn["q"]["w"].std()) / 0.02 - 1) < 0.05
    assert abs(float(attn["o"]["w"].std()) / expected_out_std - 1) < 0.05
    assert abs(float(params["blocks"]["mlp"]["down"]["w"].std()) / expected_out_std - 1) < 0.05
    plain = init_params(
        make_cfg(d_model=128, d_ff=256, n_layers=8, init_std=0.02, scale_residual_init=False),
        jax.random.key(0),
    )
    assert abs(float(plain["blocks"]["attn"]["o"]["w"].std()) / 0.02 - 1) < 0.05


def test_output_dataclass_fields(tokens_BL):
    cfg = make_cfg()
    out = forward(cfg, params_for(cfg), tokens_BL, return_hidden_states=True, return_logits=False)
    B, L = tokens_BL.shape
    assert out.logits_BLV is None
    assert out.hidden_BLD.shape == (B, L, cfg.d_model)
    assert out.hidden_states.shape == (cfg.n_layers + 1, B, L, cfg.d_model)
    assert out.aux_losses == {}


def test_forward_compiles_once(tokens_BL):
    cfg = make_cfg(pos_encoding="rope")
    traces = []

    @jax.jit
    def run(params, tokens):
        traces.append(1)
        return forward(cfg, params, tokens).logits_BLV

    params = params_for(cfg)
    for i in range(3):
        other = jax.tree.map(lambda x, i=i: x * (1 + i), params)
        run(other, (tokens_BL + i) % cfg.vocab_size).block_until_ready()
    assert len(traces) == 1
    assert run._cache_size() == 1
