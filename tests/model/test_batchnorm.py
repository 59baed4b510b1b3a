"""BatchNorm as a norm choice (`model.norm=batchnorm`): batch statistics of real tokens in
training, PreciseBN population statistics (llm/model/precise_bn.py) in evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.config.base import ConfigError
from llm.interop.hf_config import UnsupportedConfig, hf_model_type
from llm.model import forward, readout
from llm.model.batchnorm import batch_norm_reference
from llm.model.kv_cache import init_cache
from llm.model.precise_bn import calibrate
from tests.model.conftest import make_cfg, params_for

CFG = make_cfg(norm="batchnorm", n_layers=1)
KEY = jax.random.key(7)  # a dropout key marks a training forward (all dropout rates are 0)
SEG = jnp.asarray([[1] * 6 + [0] * 2, [1] * 8])  # row 0 ends in two padding slots


def test_statistics_per_channel_over_batch_and_length_without_padding():
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 5, 3))) * 3 + 1
    valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool)
    scale, bias = np.array([1.0, 2.0, 0.5]), np.array([0.0, -1.0, 3.0])
    got = np.asarray(batch_norm_reference(jnp.asarray(x), jnp.asarray(valid), scale, bias, 1e-5))
    rows = x[valid]  # [7, 3]: the valid tokens of both rows
    want = (x - rows.mean(0)) / np.sqrt(rows.var(0) + 1e-5) * scale + bias
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    normed = (got[valid] - bias) / scale
    np.testing.assert_allclose(normed.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(normed.var(0), 1, atol=1e-3)
    x_padded = np.where(valid[..., None], x, 1e4)  # padding values never enter the statistics
    again = batch_norm_reference(jnp.asarray(x_padded), jnp.asarray(valid), scale, bias, 1e-5)
    np.testing.assert_allclose(np.asarray(again)[valid], got[valid], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tokens():
    return jax.random.randint(jax.random.key(1), (2, 8), 0, 61)


@pytest.fixture(scope="module")
def calibration():
    """Two batches (the first with padding) and the params calibrated on them."""
    batches = [
        {"inputs": jax.random.randint(jax.random.key(3), (2, 8), 0, 61), "segment_ids": SEG},
        {"inputs": jax.random.randint(jax.random.key(4), (3, 8), 0, 61)},
    ]
    return batches, calibrate(CFG, params_for(CFG), batches)


def test_batch_statistics_leak_the_future_where_layernorm_does_not(tokens):
    """The LayerNorm-vs-BatchNorm lesson: batch statistics mix every token of the batch, so
    a causal LM's logits at position 2 depend on the input at position 6 (and on the other
    row); with LayerNorm they do not."""
    future, other_row = _dependence(CFG, params_for(CFG), tokens, KEY)
    assert future > 0 and other_row > 0
    cfg = make_cfg(n_layers=1)
    assert _dependence(cfg, params_for(cfg), tokens, KEY) == (0.0, 0.0)


def _dependence(cfg, params, tokens, key):
    """|d logits[0, 2] / d input[0, 6]| and |d logits[0, 2] / d input[row 1]|."""
    x_BLD = jax.random.normal(jax.random.key(2), (2, 8, cfg.d_model))

    def logit(x):
        out = forward(cfg, params, tokens, input_embeddings_BLD=x, dropout_key=key)
        return out.logits_BLV[0, 2].sum()

    g_BLD = jax.jit(jax.grad(logit))(x_BLD)
    return float(jnp.abs(g_BLD[0, 6]).sum()), float(jnp.abs(g_BLD[1]).sum())


def test_padding_does_not_change_real_tokens(tokens):
    params = params_for(CFG)
    run = jax.jit(lambda t: forward(CFG, params, t, segment_ids_BL=SEG, dropout_key=KEY))
    a = run(tokens).logits_BLV
    b = run(tokens.at[0, 6:].set(5)).logits_BLV  # other ids in the padding slots
    np.testing.assert_allclose(a[0, :6], b[0, :6], atol=1e-6, rtol=0)
    np.testing.assert_allclose(a[1], b[1], atol=1e-6, rtol=0)


def _real_tokens(batches, hidden):
    """Concatenated [N, D] rows of `hidden(batch)` [B, L, D] at each batch's real tokens."""
    rows = []
    for b in batches:
        seg = np.asarray(b.get("segment_ids", np.ones(b["inputs"].shape)))
        rows.append(np.asarray(hidden(b), np.float64)[seg != 0])
    return np.concatenate(rows)


def test_pooled_statistics_equal_numpy_over_all_real_tokens(calibration):
    """Layer 0's attn_norm reads the embeddings, the final norm the block output (pre-norm):
    their stored statistics are numpy's mean / var over the 6 + 24 real tokens of both
    batches (the training-mode forward, padding excluded)."""
    batches, calibrated = calibration
    params = params_for(CFG)

    def states(b):
        out = forward(CFG, params, b["inputs"], segment_ids_BL=b.get("segment_ids"),
                      dropout_key=KEY, return_hidden_states=True)  # fmt: skip
        return out.hidden_states

    for i, name in ((0, None), (-1, "final_norm")):
        x_ND = _real_tokens(batches, lambda b, i=i: states(b)[i])
        got = (
            calibrated[name]
            if name
            else jax.tree.map(lambda a: a[0], calibrated["blocks"]["attn_norm"])
        )
        np.testing.assert_allclose(got["mean"], x_ND.mean(0), atol=1e-5, rtol=0)
        np.testing.assert_allclose(got["var"], x_ND.var(0), atol=1e-5, rtol=1e-5)
    assert not np.allclose(calibrated["blocks"]["mlp_norm"]["var"], 1.0)


def test_evaluation_normalises_with_the_stored_statistics(calibration, tokens):
    _, calibrated = calibration
    out = forward(CFG, calibrated, tokens, return_hidden_states=True)  # no key: evaluation
    x = np.asarray(out.hidden_states[-1], np.float64)
    fn = {k: np.asarray(v, np.float64) for k, v in calibrated["final_norm"].items()}
    want = (x - fn["mean"]) / np.sqrt(fn["var"] + CFG.norm_eps) * fn["scale"]
    want = want + fn["bias"] if "bias" in fn else want
    np.testing.assert_allclose(np.asarray(out.hidden_BLD), want, atol=1e-5, rtol=1e-5)
    lens = readout(CFG, calibrated, out.hidden_states[-1])  # the logit lens now runs too
    np.testing.assert_allclose(lens, out.logits_BLV, atol=1e-5, rtol=0)


def test_calibrated_evaluation_is_causal_again(calibration, tokens):
    """The mirror of the leak above: with stored statistics nothing reads other tokens."""
    _, calibrated = calibration
    assert _dependence(CFG, calibrated, tokens, None) == (0.0, 0.0)


def test_cached_decode_equals_the_full_evaluation_forward(calibration, tokens):
    _, calibrated = calibration
    full = forward(CFG, calibrated, tokens).logits_BLV
    cache = init_cache(CFG, 2, 16)
    first = forward(CFG, calibrated, tokens[:, :6], cache=cache)
    second = forward(CFG, calibrated, tokens[:, 6:], cache=first.cache)
    np.testing.assert_allclose(first.logits_BLV, full[:, :6], atol=1e-5, rtol=0)
    np.testing.assert_allclose(second.logits_BLV, full[:, 6:], atol=1e-5, rtol=0)


def test_uncalibrated_evaluation_is_refused_by_name(tokens):
    with pytest.raises(ValueError, match="population statistics were never calibrated"):
        forward(CFG, params_for(CFG), tokens)  # eager: the init statistics are visible
    with pytest.raises(ValueError, match=r"PreciseBN calibrates model\.norm=batchnorm"):
        calibrate(make_cfg(n_layers=1), params_for(make_cfg(n_layers=1)), [{"inputs": tokens}])


def test_config_and_export_refusals():
    with pytest.raises(ConfigError, match="norm"):
        make_cfg(norm="batchnorm", arch="gru")
    with pytest.raises(ConfigError, match="batchnorm_calibration_batches"):
        make_cfg(batchnorm_calibration_batches=4)  # layernorm would ignore it
    with pytest.raises(ConfigError, match="batchnorm_calibration_batches"):
        make_cfg(norm="batchnorm", batchnorm_calibration_batches=0)
    with pytest.raises(UnsupportedConfig, match="norm='batchnorm'"):
        hf_model_type(CFG)
