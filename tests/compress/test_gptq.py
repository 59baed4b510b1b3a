"""GPTQ (llm/compress/gptq.py): the lazy-batched `fori_loop` equals the plain one-row-at-a-time
reference, beats round-to-nearest on real activations, and compiles to a loop, not a ladder."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.compress import calibration, gptq
from llm.compress.spec import PtqSpec
from llm.config import load_config
from llm.model import init_params
from llm.ops import quantized as qz
from llm.tokenizers import ByteTokenizer

# (fmt, bits, group, act_order): every code format, grouped and per channel, both orders
CASES = [
    ("int4", 4, 32, True),
    ("int4", 3, 0, False),
    ("uint4", 4, 32, True),
    ("nf4", 4, 48, False),
    ("int8", 8, 0, True),
]


def correlated_inputs(m: int, k: int, seed: int = 0) -> np.ndarray:
    """[m, k] inputs with uneven channel scales, one dead channel (3) and two near-copies."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, k)) * rng.uniform(0.1, 3.0, size=k)
    x[:, 3] = 0.0
    x[:, 7] = x[:, 8] + 0.01 * x[:, 7]
    return x.astype(np.float32)


def dequant(codes_KN, scales_GN, offsets_GN, fmt: str) -> np.ndarray:
    g = codes_KN.shape[0] // scales_GN.shape[0]
    rep = lambda a: None if a is None else np.repeat(np.asarray(a), g, axis=0)  # noqa: E731
    return np.asarray(qz.decode(jnp.asarray(codes_KN), rep(scales_GN), rep(offsets_GN), fmt))


def rtn(w_KN: np.ndarray, fmt: str, bits: int, group: int) -> np.ndarray:
    q = qz.quantize(jnp.asarray(w_KN), fmt=fmt, bits=bits, group=group, n_in=1, n_out=1)
    return np.asarray(qz.dequantize(q))


@pytest.mark.parametrize("fmt,bits,group,act_order", CASES)
def test_fori_loop_equals_the_plain_reference(fmt, bits, group, act_order):
    """Same codes and grids as the numpy float64 loop; block 40 does not divide K = 96, so
    the padded last block is exercised too."""
    x = correlated_inputs(256, 96)
    w = np.random.default_rng(1).normal(size=(96, 48)).astype(np.float32)
    h = gptq.hessian(jnp.asarray(x))
    got = gptq.gptq_matrix(jnp.asarray(w), h, fmt=fmt, bits=bits, group=group,
                           act_order=act_order, block=40)  # fmt: skip
    want = gptq.gptq_matrix_reference(w, h, fmt=fmt, bits=bits, group=group, act_order=act_order)
    assert np.mean(np.asarray(got[0]) == want[0]) >= 0.999  # float32 vs float64 near-ties
    np.testing.assert_allclose(np.asarray(got[1]), want[1], rtol=1e-6)
    assert (got[2] is None) == (want[2] is None) == (fmt != "uint4")
    # the dead input's row is zeroed before quantizing, as GPTQ does: 0 itself, or (uint4,
    # whose grid need not hold 0) within half a step of it
    half_step = 0.0 if fmt != "uint4" else np.asarray(got[1])[3 // (group or 96)] / 2
    assert np.all(np.abs(dequant(*got, fmt)[3]) <= half_step * (1 + 1e-6))


def test_diagonal_hessian_reduces_to_round_to_nearest():
    """With uncorrelated inputs no error can be compensated: GPTQ's codes are RTN's, in the
    natural row order even though act-order visits rows by descending diag(H)."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(64, 32)).astype(np.float32)
    h = jnp.diag(jnp.asarray(rng.uniform(0.5, 4.0, size=64), jnp.float32))
    codes, scales, offsets = gptq.gptq_matrix(jnp.asarray(w), h, fmt="int4", bits=4, group=16)
    np.testing.assert_array_equal(dequant(codes, scales, offsets, "int4"), rtn(w, "int4", 4, 16))


def test_hessian_sums_over_batches():
    x = correlated_inputs(64, 16)
    both = gptq.hessian(jnp.asarray(x[:40])) + gptq.hessian(jnp.asarray(x[40:]))
    np.testing.assert_allclose(np.asarray(both), 2 * x.T.astype(np.float64) @ x, rtol=1e-5,
                               atol=1e-4)  # fmt: skip


def count_eqns(jaxpr) -> int:
    """Equations of a jaxpr and of every jaxpr nested in its equations' params."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = len(jaxpr.eqns)
    for eqn in jaxpr.eqns:
        for value in eqn.params.values():
            for v in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(v, "eqns") or hasattr(getattr(v, "jaxpr", None), "eqns"):
                    total += count_eqns(v)
    return total


def test_loop_is_not_unrolled():
    """The traced program has as many equations for K = 64 as for K = 512 (qwix unrolls one
    step per column: 68 s to compile a 128 x 256 matrix, issue 19): compile time is flat in K."""

    def n_eqns(k: int) -> int:
        w, h = jnp.zeros((k, 32)), jnp.eye(k)
        run = functools.partial(gptq._gptq, fmt="int4", bits=4, group=32, act_order=True,
                                block=32)  # fmt: skip
        traced = jax.make_jaxpr(lambda w, h: run(w, h, 0.01))(w, h)
        return count_eqns(traced)

    assert n_eqns(64) == n_eqns(512)


def test_bad_arguments_are_named():
    w, h = jnp.ones((64, 8)), jnp.eye(64)
    with pytest.raises(ValueError, match="group=48 must divide"):
        gptq.gptq_matrix(w, h, fmt="int4", bits=4, group=48)
    with pytest.raises(ValueError, match="format nf4 takes bits"):
        gptq.gptq_matrix(w, h, fmt="nf4", bits=3, group=0)
    with pytest.raises(ValueError, match="Hessian shape"):
        gptq.gptq_matrix(w, jnp.eye(32), fmt="int4", bits=4, group=0)
    with pytest.raises(ValueError, match="not positive definite"):
        gptq.gptq_matrix(w, -jnp.eye(64), fmt="int4", bits=4, group=0, damp=0.0)


@pytest.fixture(scope="module")
def tiny_layer():
    """Layer 0 of a tiny random model and its input on real (Shakespeare) calibration bytes."""
    cfg = load_config(None, ["model.d_model=64", "model.n_layers=1", "model.n_heads=4",
                             "model.d_ff=128", "model.init_std=0.1"]).model  # fmt: skip
    params = init_params(cfg, jax.random.key(0))
    tokens = calibration.calibration_tokens(ByteTokenizer(), n_seqs=8, seq_len=64)
    x_BLD = calibration.embed_inputs(cfg, params, jnp.asarray(tokens))
    return cfg, calibration.layer_params(params, 0), x_BLD


@pytest.mark.parametrize("fmt,bits,group", [("int4", 4, 32), ("int4", 3, 0), ("uint4", 3, 32),
                                            ("nf4", 4, 64), ("int8", 8, 0)])  # fmt: skip
def test_reconstruction_error_below_rtn(tiny_layer, fmt, bits, group):
    """||X W - X Q||^2 on the calibration activations, for a square and a tall Linear."""
    cfg, layer, x_BLD = tiny_layer
    inputs = calibration.linear_inputs(cfg, layer, x_BLD)
    for path in ("attn/q/w", "mlp/down/w"):
        x = np.asarray(inputs[path], np.float64)
        w = np.asarray(gptq.matrix_view(gptq.get_path(layer, path), 1), np.float32)
        got = gptq.gptq_matrix(jnp.asarray(w), gptq.hessian(inputs[path]), fmt=fmt, bits=bits,
                               group=group)  # fmt: skip
        y = x @ w
        gptq_err = np.sum((y - x @ dequant(*got, fmt)) ** 2)
        assert gptq_err < np.sum((y - x @ rtn(w, fmt, bits, group)) ** 2), path


def test_gptq_layer_quantizes_every_linear_from_its_own_inputs(tiny_layer):
    cfg, layer, x_BLD = tiny_layer
    spec = PtqSpec(method="gptq", fmt="int4", bits=4, group=32)
    out = gptq.gptq_layer(cfg, layer, x_BLD, spec)
    inputs = calibration.linear_inputs(cfg, layer, x_BLD)
    for path in gptq.block_linears(cfg, layer):
        q = gptq.get_path(out, path)
        assert qz.is_qarray(q) and q.shape == gptq.get_path(layer, path).shape
        w = gptq.matrix_view(gptq.get_path(layer, path), q.n_in)
        h = gptq.hessian(inputs[path])  # k and v are quantized from q's (equal) input
        codes, _, _ = gptq.gptq_matrix(w, h, fmt="int4", bits=4, group=32)
        np.testing.assert_array_equal(np.asarray(qz.unpacked_codes(q)).reshape(codes.shape),
                                      np.asarray(codes))  # fmt: skip
    assert gptq.get_path(out, "attn_norm/scale") is layer["attn_norm"]["scale"]
