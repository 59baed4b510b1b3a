"""Block-wise NF4 and int8 quantisation (llm/peft/quant.py) against plain references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.peft import quant

# bitsandbytes 0.50.2, bitsandbytes/functional.py `get_4bit_type("nf4")`: the NF4 table as
# shipped (also the QLoRA paper's appendix E), generated there by create_normal_map(0.9677083)
# with scipy in float32 torch arithmetic.
BNB_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]  # fmt: skip
# bitsandbytes rounds the offset to 0.9677083 and spaces the probabilities in float32; ours
# are float64 from the exact offset, so each level may differ by a few float32 ulps (2^-23
# relative; 2e-7 covers 3 ulps at 0.5)
LEVEL_ATOL = 2e-7
F32_EPS = float(np.finfo(np.float32).eps)


def _codes(q, fmt):
    """The codes of a quantised leaf as int64, one per value (NF4 unpacked)."""
    codes = np.asarray(q[fmt]).astype(np.int64)
    return (
        codes
        if fmt == "int8"
        else np.stack([codes >> 4, codes & 15], -1).reshape(*codes.shape[:-1], -1)
    )


def assert_codes_match(q, x, fmt, block):
    """`q` holds the float64 reference's codes, except that a value within float32 rounding
    of a decision boundary (8 eps of x / absmax: one ulp of the division, half of the
    multiply, with room) may take the neighbouring code."""
    ref = quant.quantize_reference(np.asarray(x), fmt, block)
    got, want = _codes(q, fmt), _codes(ref, fmt)
    near = quant.boundary_margin(np.asarray(x), fmt, block) < 8 * F32_EPS
    np.testing.assert_array_equal(got[~near], want[~near])
    assert np.all(np.abs(got - want)[near] <= 1)
    np.testing.assert_array_equal(q["scales"], ref["scales"])


def _weights(shape, seed=0, dtype=jnp.float32):
    """Normal weights with blocks of very different scales (absmax varies per block)."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(k1, shape)
    gain = jnp.exp(jax.random.normal(k2, (*shape[:-1], 1)) * 2)
    return (x * gain).astype(dtype)


def test_nf4_levels_are_the_papers():
    np.testing.assert_allclose(quant.NF4_LEVELS, BNB_NF4, rtol=0, atol=LEVEL_ATOL)
    assert quant.NF4_LEVELS[quant.NF4_ZERO] == 0.0 and quant.NF4_ZERO == 7  # an exact zero
    assert quant.NF4_LEVELS[0] == -1.0 and quant.NF4_LEVELS[-1] == 1.0
    # 8 levels above zero and 7 below (the asymmetric layout with zero shared)
    assert (quant.NF4_LEVELS > 0).sum() == 8 and (quant.NF4_LEVELS < 0).sum() == 7


@pytest.mark.parametrize("fmt", quant.FORMATS)
@pytest.mark.parametrize("block", [16, 64])
def test_matches_the_reference_and_jit(fmt, block):
    x = _weights((3, 5, 128))
    q = quant.quantize(x, fmt, block)
    assert set(q) == {fmt, "scales"}
    assert_codes_match(q, x, fmt, block)
    jitted = jax.jit(lambda x: quant.quantize(x, fmt, block))(x)
    for key in q:
        np.testing.assert_array_equal(jitted[key], q[key])
    host = {k: np.asarray(v) for k, v in q.items()}
    np.testing.assert_array_equal(quant.dequantize(q), quant.dequantize_reference(host))
    np.testing.assert_array_equal(jax.jit(quant.dequantize)(q), quant.dequantize(q))


@pytest.mark.parametrize("fmt", quant.FORMATS)
def test_round_trip_is_within_the_formats_bound(fmt):
    """|x - x'| <= absmax * bound per block: int8 absmax/127/2; NF4 half the largest gap
    between adjacent levels times absmax. The float32 arithmetic (x / a, the level or
    code / 127 times a) adds at most a few ulps of a, counted as 4 eps * a."""
    x = _weights((4, 8, 256), seed=1)
    back = quant.dequantize(quant.quantize(x, fmt, 64))
    xb = np.asarray(x).reshape(4, 8, 4, 64)
    absmax = np.abs(xb).max(-1, keepdims=True)
    err = np.abs(np.asarray(back).reshape(xb.shape) - xb)
    bound = absmax * (quant.max_error(fmt) + 4 * F32_EPS)
    assert np.all(err <= bound), float(np.max(err / absmax))
    # the bound is nearly reached (2048 values), so it is the format's and not a loose one
    assert np.max(err / absmax) > 0.9 * quant.max_error(fmt)
    assert quant.max_error("int8") == pytest.approx(1 / 254)
    assert quant.max_error("nf4") == pytest.approx((1 - 0.6961928) / 2, abs=1e-6)


def test_nf4_codes_on_hand_made_blocks():
    """Block [a, -a, 0, a*level_i...]: each value exactly on a level gets that level's code,
    and values just either side of a midpoint go to the nearer level."""
    levels = quant.NF4_LEVELS
    on_levels = 3.0 * levels  # absmax 3: x / 3 is exactly a level
    mid = 3.0 * (levels[9] + levels[10]) / 2
    near = np.array([mid - 1e-3, mid + 1e-3, 0.0, -3.0], np.float32)
    x = jnp.asarray(np.concatenate([on_levels, near, np.zeros(12, np.float32)]).reshape(1, 32))
    q = quant.quantize(x, "nf4", 16)
    codes = np.asarray(quant.unpack_nibbles(q["nf4"]))[0]
    np.testing.assert_array_equal(codes[:16], np.arange(16))
    np.testing.assert_array_equal(codes[16:20], [9, 10, 7, 0])
    np.testing.assert_array_equal(codes[20:], 7)  # the zero code
    np.testing.assert_array_equal(q["scales"], [[3.0, 3.0]])
    np.testing.assert_array_equal(quant.dequantize(q)[0, :16], on_levels)  # exact on levels
    # packing: element 0 in the high nibble, element 1 in the low one
    assert int(q["nf4"][0, 0]) == (0 << 4) | 1 and int(q["nf4"][0, 7]) == (14 << 4) | 15


def test_int8_codes_on_hand_made_blocks():
    """absmax 1: code = round(127 x), values kept well away from the .5 ties."""
    row = np.array([1.0, -1.0, 0.3, 0.7, 0.2, 63.6, -1.4, 0.0], np.float32)
    row[3:7] /= 127  # 0.7/127 -> 1, 0.2/127 -> 0, 63.6/127 -> 64, -1.4/127 -> -1
    x = jnp.asarray(np.stack([row, np.zeros(8, np.float32)]))
    q = quant.quantize(x, "int8", 8)
    np.testing.assert_array_equal(q["int8"][0], [127, -127, 38, 1, 0, 64, -1, 0])  # 38.1 -> 38
    np.testing.assert_array_equal(q["int8"][1], np.zeros(8))  # an all-zero block
    np.testing.assert_array_equal(q["scales"], [[1.0], [0.0]])
    np.testing.assert_array_equal(quant.dequantize(q)[1], np.zeros(8))  # zeros come back exact
    assert float(quant.dequantize(q)[0, 0]) == 1.0 and float(quant.dequantize(q)[0, 1]) == -1.0


def test_packing_round_trips():
    codes = jax.random.randint(jax.random.key(3), (4, 6, 10), 0, 16).astype(jnp.uint8)
    packed = quant.pack_nibbles(codes)
    assert packed.shape == (4, 6, 5) and packed.dtype == jnp.uint8
    np.testing.assert_array_equal(quant.unpack_nibbles(packed), codes)
    every = jnp.arange(256, dtype=jnp.uint8)
    np.testing.assert_array_equal(quant.pack_nibbles(quant.unpack_nibbles(every)), every)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtypes_and_shapes(dtype):
    x = _weights((2, 3, 64), dtype=dtype)
    for fmt, code_dtype, width in (("nf4", jnp.uint8, 32), ("int8", jnp.int8, 64)):
        q = quant.quantize(x, fmt, 32)
        assert q[fmt].dtype == code_dtype and q[fmt].shape == (2, 3, width)
        assert q["scales"].dtype == dtype and q["scales"].shape == (2, 3, 2)
        assert quant.stored_shapes(x.shape, fmt, 32) == {k: v.shape for k, v in q.items()}
        back = quant.dequantize(q)
        assert back.dtype == dtype and back.shape == x.shape
    assert quant.bits_per_value("nf4", 64) == 4.5 and quant.bits_per_value("int8", 64) == 8.5


def test_bad_input_is_a_clear_error():
    x = jnp.zeros((4, 48))
    with pytest.raises(ValueError, match=r"last axis of shape \(4, 48\) must be a multiple of "
                       r"block_size=32"):  # fmt: skip
        quant.quantize(x, "nf4", 32)
    with pytest.raises(ValueError, match=r"block_size=3 must be positive \(and even for nf4\)"):
        quant.quantize(x, "nf4", 3)
    with pytest.raises(ValueError, match="unknown format 'fp4'"):
        quant.quantize(x, "fp4", 16)
    with pytest.raises(ValueError, match=r"not a quantised weight: keys \['codes', 'scales'\]"):
        quant.dequantize({"codes": x, "scales": x})
    q = quant.quantize(x, "int8", 16)
    with pytest.raises(ValueError, match="do not fit scales"):
        quant.dequantize({"int8": q["int8"], "scales": q["scales"][:2]})
