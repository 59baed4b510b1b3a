"""The fast paths of `llm.ops.quantized`: `matmul` (the fused multiply-reduce for decode rows,
the dot for more rows), `matmul_t` and `take` equal their definitions through `dequantize`
within float rounding, and at one row XLA:CPU streams the codes instead of writing a float
copy of the weight."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.ops import quantized as Q

CASES = [  # (fmt, bits, group): per channel, grouped, every nibble format, 3-bit codes
    ("int8", 8, 0),
    ("int8", 8, 32),
    ("int4", 4, 32),
    ("int4", 3, 64),
    ("uint4", 4, 32),
    ("nf4", 4, 64),
]
K, N_HEADS, H = 128, 3, 16  # a (K, N, H) weight like the attention projections: n_out = 2


def weight(seed=0, shape=(K, N_HEADS, H)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def rounding_bound(x_MK, q):
    """Float32 summation-order bound: K * eps * sum_k |x_k| |w_kn| (per output)."""
    w_KN = np.abs(np.asarray(Q.dequantize(q)).reshape(q.K, q.N))
    return q.K * np.finfo(np.float32).eps * (np.abs(np.asarray(x_MK)) @ w_KN) + 1e-30


@pytest.mark.parametrize("rows", [1, 2, 5])
@pytest.mark.parametrize(("fmt", "bits", "group"), CASES)
def test_matmul_equals_dequantize_then_matmul(fmt, bits, group, rows):
    q = Q.quantize(weight(), fmt=fmt, bits=bits, group=group, n_in=1, n_out=2)
    x_MK = weight(1, (rows, K))
    want = np.asarray(x_MK, np.float64) @ Q.dequantize_reference(q).reshape(K, -1).astype(
        np.float64
    )
    got = np.asarray(jax.jit(Q.matmul)(x_MK, q))
    assert got.shape == (rows, N_HEADS * H)
    assert (np.abs(got - want) <= rounding_bound(x_MK, q)).all()


TABLE_CASES = [("int8", 8, 0), ("int4", 4, 16), ("nf4", 4, 32)]


@pytest.mark.parametrize(("fmt", "bits", "group"), TABLE_CASES)
def test_matmul_t_and_take_follow_dequantize(fmt, bits, group):
    table_VD = weight(2, (40, 64))
    q = Q.quantize(table_VD, fmt=fmt, bits=bits, group=group, n_in=1, n_out=0)
    full_VD = np.asarray(Q.dequantize(q))
    np.testing.assert_array_equal(full_VD, Q.dequantize_reference(q))
    idx = jnp.asarray([[3, 0, 39], [7, 7, 1]])
    np.testing.assert_array_equal(jax.jit(Q.take)(q, idx), full_VD[np.asarray(idx)])
    x_MD = weight(3, (2, 64))
    want = np.asarray(x_MD, np.float64) @ full_VD.T.astype(np.float64)
    bound = 64 * np.finfo(np.float32).eps * (np.abs(np.asarray(x_MD)) @ np.abs(full_VD).T)
    assert (np.abs(np.asarray(jax.jit(Q.matmul_t)(x_MD, q)) - want) <= bound).all()


def test_one_row_matmul_reads_codes_without_a_float_copy():
    """What XLA:CPU does with `x @ dequantize(q)`: a loop fusion writes the float weight
    f32[K, N], then a dot reads it. The one-row path must leave no f32 array of the weight's
    size in the optimised HLO: the codes are decoded inside the reduction's fusion."""
    K_, N_ = 256, 384
    q = Q.quantize(weight(4, (K_, N_)), fmt="int8", bits=8, group=0, n_in=1, n_out=1)
    x_1K = jnp.ones((1, K_), jnp.float32)

    def float_copies(fn) -> int:  # buffers of the entry computation (not fused temporaries)
        entry = jax.jit(fn).lower(x_1K, q).compile().as_text().split("\nENTRY")[1]
        return len(re.findall(rf"= f32\[{K_},{N_}\]", entry))

    assert float_copies(lambda x, q: x @ Q.dequantize(q)) >= 1  # the unfused form does copy
    assert float_copies(Q.matmul) == 0


def test_stacked_qarray_is_refused():
    q = Q.quantize(weight(5, (2, K, 8)), fmt="int8", bits=8, group=0, n_in=1, n_out=1)
    with pytest.raises(ValueError, match="lead axes"):
        Q.matmul(jnp.ones((1, K)), q)
