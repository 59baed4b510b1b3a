"""Inputs shared by the kernel tests: random q/k/v and mask inputs for one attention case."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

FAST_COMPILE = {"xla_backend_optimization_level": 0}


@dataclasses.dataclass(frozen=True)
class Case:
    """One attention problem; `packed` puts two documents and a padded tail in each row."""

    name: str
    B: int = 1
    L: int = 40
    S: int = 40
    N: int = 2
    K: int = 2
    H: int = 32
    causal: bool = True
    window: int | None = None
    softcap: float | None = None
    alibi: bool = False
    packed: bool = False
    decode_positions: bool = False  # queries are the last L positions of an S-long context
    orphan_queries: bool = False  # some query rows have a segment no key has: output 0
    dtype: str = "float32"


def packed_ids(B: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Segment ids 1, 2 (documents of uneven length) then 0 padding; positions restart."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((B, length), np.int32)
    pos = np.zeros((B, length), np.int32)
    for b in range(B):
        cut = int(rng.integers(length // 4, length // 2))
        end = int(rng.integers(3 * length // 4, length))
        seg[b, :cut], seg[b, cut:end] = 1, 2
        pos[b, :cut], pos[b, cut:end] = np.arange(cut), np.arange(end - cut)
    return seg, pos


def make_inputs(c: Case, seed: int = 0):
    """(q, k, v, ids, slopes) with ids = (q_seg, kv_seg, q_pos, kv_pos)."""
    ks = jax.random.split(jax.random.key(seed), 4)
    dtype = jnp.dtype(c.dtype)
    q = jax.random.normal(ks[0], (c.B, c.L, c.N, c.H), jnp.float32).astype(dtype)
    k = jax.random.normal(ks[1], (c.B, c.S, c.K, c.H), jnp.float32).astype(dtype)
    v = jax.random.normal(ks[2], (c.B, c.S, c.K, c.H), jnp.float32).astype(dtype)
    q_seg, q_pos = np.ones((c.B, c.L), np.int32), np.tile(np.arange(c.L, dtype=np.int32), (c.B, 1))
    kv_seg, kv_pos = (
        np.ones((c.B, c.S), np.int32),
        np.tile(np.arange(c.S, dtype=np.int32), (c.B, 1)),
    )
    if c.packed:
        assert c.L == c.S
        q_seg, q_pos = packed_ids(c.B, c.L, seed)
        kv_seg, kv_pos = q_seg, q_pos
    if c.decode_positions:
        q_pos = q_pos + (c.S - c.L)
        kv_seg[:, c.S - 3 :] = 0  # a padded cache tail
    if c.orphan_queries:
        q_seg = q_seg.copy()
        q_seg[:, : c.L // 3] = 7
    slopes = jnp.linspace(0.05, 0.5, c.N, dtype=jnp.float32) if c.alibi else None
    ids = tuple(jnp.asarray(x) for x in (q_seg, kv_seg, q_pos, kv_pos))
    return q, k, v, ids, slopes


def out_and_grads(fn, q, k, v, ids, slopes, c: Case, **kwargs):
    """Output and (dq, dk, dv) under a fixed random cotangent, in float32 numpy.

    One jit around it all: eager mode would compile every small op of the interpreted kernel
    on its own, several times slower. XLA's backend optimisation is off: these programs run
    for a fraction of a second but took seconds to optimise (numerics are unaffected).
    """

    def run(q, k, v, ids, slopes):
        def f(q, k, v):
            return fn(
                q,
                k,
                v,
                *ids,
                slopes,
                causal=c.causal,
                sliding_window=c.window,
                softcap=c.softcap,
                **kwargs,
            )

        out, vjp = jax.vjp(f, q, k, v)
        cot = jax.random.normal(jax.random.key(99), out.shape, jnp.float32).astype(out.dtype)
        return (out, *vjp(cot))

    args = (q, k, v, ids, slopes)
    compiled = jax.jit(run).lower(*args).compile(FAST_COMPILE)
    return [np.asarray(x, np.float32) for x in compiled(*args)]
