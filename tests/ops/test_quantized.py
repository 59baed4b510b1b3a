"""The quantized weight format (llm/ops/quantized.py): error bounds, references, products."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.ops import quantized as q

CASES = [("int8", 8), ("int4", 4), ("int4", 3), ("uint4", 4), ("uint4", 3), ("nf4", 4)]


def _weight(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _bound(w_GgN, fmt, bits):
    """Largest |w - dequantize(quantize(w))| allowed per group: half a step of the grid (for
    NF4 half the widest gap between adjacent levels), plus float rounding."""
    w = np.asarray(w_GgN, np.float64)
    hi = q.code_range(fmt, bits)[1]
    absmax = np.abs(w).max(-2)
    if fmt == "uint4":
        step = (w.max(-2) - w.min(-2)) / hi
    elif fmt == "nf4":
        step = absmax * np.max(np.diff(q.NF4_LEVELS))
    else:
        step = absmax / hi
    return step / 2 + 1e-6 * np.maximum(absmax, 1)


@pytest.mark.parametrize("fmt,bits", CASES)
def test_round_trip_error_within_half_a_step(fmt, bits):
    w_KN = _weight((256, 24))
    qa = q.quantize(w_KN, fmt=fmt, bits=bits, group=64, n_in=1, n_out=1)
    err = np.abs(np.asarray(q.dequantize(qa)) - np.asarray(w_KN)).reshape(4, 64, 24).max(1)
    assert (err <= _bound(np.asarray(w_KN).reshape(4, 64, 24), fmt, bits)).all()
    assert err.max() > 0  # the grid is used (no silent float pass-through)


@pytest.mark.parametrize("fmt,bits", CASES)
def test_codes_are_the_nearest_grid_point(fmt, bits):
    w_KN = np.asarray(_weight((64, 8), seed=1))
    qa = q.quantize(jnp.asarray(w_KN), fmt=fmt, bits=bits, group=32, n_in=1, n_out=1)
    lo, hi = q.code_range(fmt, bits)
    codes = np.arange(lo, hi + 1)
    s = np.asarray(qa.scales, np.float64).repeat(32, 0)
    o = 0 if qa.offsets is None else np.asarray(qa.offsets, np.float64).repeat(32, 0)
    levels = q.NF4_LEVELS[codes] if fmt == "nf4" else codes
    grid = levels[None, None, :] * s[..., None] + (o[..., None] if fmt == "uint4" else 0)
    dist = np.abs(grid - w_KN[..., None])
    got = np.asarray(q.unpacked_codes(qa)) - lo
    chosen = np.take_along_axis(dist, got[..., None], -1)[..., 0]
    # nearest up to float32 rounding of the division (ties may go either way)
    assert (chosen <= dist.min(-1) + 1e-5 * np.abs(s)).all()


@pytest.mark.parametrize("fmt,bits", CASES)
def test_dequantize_equals_the_numpy_reference(fmt, bits):
    w = _weight((2, 16, 3, 8), seed=2)  # lead 2, in (16,), out (3, 8): a stacked q projection
    qa = q.quantize(w, fmt=fmt, bits=bits, group=8, n_in=1, n_out=2)
    assert qa.shape == w.shape and qa.lead_shape == (2,) and (qa.K, qa.N) == (16, 24)
    assert qa.scales.shape == (2, 2, 3, 8)
    np.testing.assert_array_equal(np.asarray(q.dequantize(qa)), q.dequantize_reference(qa))


def test_two_contracted_axes_group_along_their_product():
    w = _weight((4, 8, 16), seed=3)  # an output projection [N, H, D]: K = 32
    qa = q.quantize(w, fmt="int8", bits=8, group=16, n_in=2, n_out=1)
    assert qa.scales.shape == (2, 16)
    w_KN = np.asarray(w).reshape(32, 16)
    expect = np.abs(w_KN.reshape(2, 16, 16)).max(1) / 127
    np.testing.assert_allclose(np.asarray(qa.scales), expect, rtol=1e-6)


@pytest.mark.parametrize("fmt,bits,group", [("int8", 8, 0), ("int4", 4, 16), ("uint4", 4, 32)])
def test_matmul_equals_dequantize_then_matmul(fmt, bits, group):
    w_KN, x_MK = _weight((64, 40), seed=4), _weight((5, 64), seed=5)
    qa = q.quantize(w_KN, fmt=fmt, bits=bits, group=group, n_in=1, n_out=1)
    np.testing.assert_allclose(
        np.asarray(q.matmul(x_MK, qa)), np.asarray(x_MK @ q.dequantize(qa)), rtol=1e-5, atol=1e-5
    )


def test_w8a8_matmul_equals_its_integer_arithmetic():
    w_KN, x_MK = _weight((32, 12), seed=6), _weight((7, 32), seed=7) * 3
    qa = q.quantize(w_KN, fmt="int8", bits=8, group=0, n_in=1, n_out=1, act_bits=8)
    x = np.asarray(x_MK, np.float64)
    xs = np.abs(x).max(1) / 127
    xq = np.clip(np.round(x / xs[:, None]), -127, 127).astype(np.int64)
    acc = xq @ np.asarray(qa.codes, np.int64)
    expect = acc * xs[:, None] * np.asarray(qa.scales, np.float64)
    np.testing.assert_allclose(np.asarray(q.matmul(x_MK, qa)), expect, rtol=1e-5, atol=1e-6)


def test_take_and_matmul_t_read_a_table_along_d():
    table_VD = _weight((10, 32), seed=8)
    qa = q.quantize(table_VD, fmt="nf4", bits=4, group=16, n_in=1, n_out=0)
    deq = np.asarray(q.dequantize(qa))
    idx = jnp.array([[3, 0, 9], [3, 3, 1]])
    np.testing.assert_array_equal(np.asarray(q.take(qa, idx)), deq[np.asarray(idx)])
    x_MD = _weight((4, 32), seed=9)
    np.testing.assert_allclose(np.asarray(q.matmul_t(x_MD, qa)), np.asarray(x_MD) @ deq.T,
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_stack_and_slicing_keep_the_layout():
    layers = [q.quantize(_weight((16, 8), seed=s), fmt="int4", bits=4, group=8, n_in=1, n_out=1)
              for s in range(3)]  # fmt: skip
    st = q.stack(layers)
    assert st.shape == (3, 16, 8) and st.lead_shape == (3,)
    one = jax.tree.map(lambda a: a[1], st)
    expect = np.asarray(q.dequantize(layers[1]))
    np.testing.assert_array_equal(np.asarray(q.dequantize(one)), expect)
    with pytest.raises(ValueError, match="differ"):
        q.stack([layers[0], q.quantize(_weight((16, 8)), fmt="int8", bits=8, group=8, n_in=1,
                                       n_out=1)])  # fmt: skip


def test_bits_per_weight_counts_scales_and_offsets():
    w = _weight((256, 64))
    assert q.bits_per_weight(q.quantize(w, fmt="int4", bits=4, group=128, n_in=1, n_out=1)) == 4.25
    assert q.bits_per_weight(q.quantize(w, fmt="uint4", bits=4, group=128, n_in=1, n_out=1)) == 4.5
    assert q.bits_per_weight(q.quantize(w, fmt="int8", bits=8, group=0, n_in=1, n_out=1)) == 8.125


def test_zero_groups_decode_to_exact_zeros():
    w = jnp.zeros((32, 4)).at[:, 1].set(2.5)
    for fmt, bits in CASES:
        qa = q.quantize(w, fmt=fmt, bits=bits, group=16, n_in=1, n_out=1)
        np.testing.assert_array_equal(np.asarray(q.dequantize(qa)), np.asarray(w))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(fmt="int4", bits=5, group=8), "bits"),
        (dict(fmt="nf4", bits=3, group=8), "bits"),
        (dict(fmt="int8", bits=8, group=5), "does not divide"),
        (dict(fmt="fp4", bits=4, group=8), "unknown format"),
        (dict(fmt="int4", bits=4, group=8, act_bits=8), "act_bits"),
    ],
)
def test_bad_formats_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        q.quantize(_weight((16, 8)), n_in=1, n_out=1, **kwargs)
    with pytest.raises(ValueError, match="odd"):
        q.quantize(_weight((16, 7)), fmt="int4", bits=4, group=8, n_in=1, n_out=1)
