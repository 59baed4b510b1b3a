"""SparseGPT (Frantar & Alistarh 2023, arXiv:2301.00774): one-shot pruning with OBS updates.

    h_KK = hessian(x_MK)                                   # 2/M X^T X of the layer's input
    w_KN, keep_KN = sparsegpt(w_KN, h_KK, sparsity=0.5)    # or nm=(2, 4)

Pruning input feature k's weights leaves an error that the optimal brain surgeon update
spreads over the not-yet-visited inputs through the inverse Hessian (sec. 3 and Algorithm 1):
the inputs are visited in order, weight rows are pruned (zeroed) one at a time, and each
row's error (w - q) / [H^-1]_kk times row k of the upper Cholesky factor of H^-1 is subtracted
from the rows after it. Using the Cholesky factor is the paper's trick (shared with GPTQ) that
makes the sequence of updates exact without re-inverting H after each row.

Design choices:
- Our weights are [K, N] (inputs x outputs), so the paper's columns are our rows, and the
  update for all N outputs of input row k is one outer product.
- Adaptive mask selection (sec. 3.3): the mask of each block of `block` rows (128 in the
  paper) is chosen when the block is reached, from the *updated* weights, by the OBS saliency
  w^2 / [H^-1]_kk^2, pruning the `round(sparsity * size)` least salient weights of the whole
  block (the reference code takes `<=` a threshold, which prunes one more; we prune exactly).
  N:M (sec. 3.4): the mask of each group of M rows is chosen when its first row is reached,
  per output column, pruning the M - N least salient (N kept of every M along K).
- Lazy batch updates: inside a block the rows run in a `lax.fori_loop` (one compile per block
  size, no unrolled Python loop under jit); the block's errors reach the later rows in one
  matmul afterwards. K need not be a multiple of `block`: the last block is shorter.
- Dead inputs (H_kk = 0: a feature never active in calibration) get H_kk = 1 and their
  weights zeroed, as in the reference code; `damp` times the mean diagonal is added to H.
- `sparsegpt_reference` is a plain numpy (float64) row-by-row version for tests.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from llm.typing import Array


def hessian(x_MK: Array) -> Array:
    """2/M X^T X in float32: the Hessian of the layer-wise squared reconstruction error."""
    x = x_MK.astype(jnp.float32)
    return 2.0 / x.shape[0] * (x.T @ x)


def _prepare(w_KN: Array, h_KK: Array, damp: float) -> tuple[Array, Array]:
    """(weights with dead inputs zeroed, upper Cholesky factor U of the damped H^-1)."""
    dead_K = jnp.diag(h_KK) == 0
    h = h_KK.at[jnp.diag_indices_from(h_KK)].set(jnp.where(dead_K, 1.0, jnp.diag(h_KK)))
    w = jnp.where(dead_K[:, None], 0.0, w_KN.astype(jnp.float32))
    h = h + damp * jnp.mean(jnp.diag(h)) * jnp.eye(h.shape[0], dtype=h.dtype)
    chol = jnp.linalg.cholesky(h)
    hinv = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(h.shape[0], dtype=h.dtype))
    return w, jnp.linalg.cholesky(hinv).T


def _lowest(scores: Array, k: int, axis: int) -> Array:
    """True where a score is among the k lowest along `axis`; ties go to the earlier
    position (stable sorts), as in the numpy reference."""
    return jnp.argsort(jnp.argsort(scores, axis=axis), axis=axis) < k


def _block_mask(w_bN: Array, d_b: Array, sparsity: float) -> np.ndarray:
    """Unstructured: True for the round(sparsity * size) least salient weights of the block
    (w^2 / d^2), chosen on the host with one stable numpy argsort (XLA's CPU sort is slow)."""
    sal = (np.asarray(w_bN) ** 2 / np.asarray(d_b)[:, None] ** 2).reshape(-1)
    pruned = np.zeros(sal.size, bool)
    pruned[np.argsort(sal, kind="stable")[: round(sparsity * sal.size)]] = True
    return pruned.reshape(w_bN.shape)


@functools.partial(jax.jit, static_argnames=("nm",))
def _block(w_bN: Array, u_bb: Array, pruned: Array, nm: tuple[int, int] | None):
    """One block: (pruned rows q_bN, errors e_bN, pruned mask) after the row-by-row updates;
    `pruned` is the block's mask (unstructured) or all False (N:M: chosen per group here)."""
    b = w_bN.shape[0]
    d_b = jnp.diag(u_bb)
    m = nm[1] if nm else 1

    def row(i, carry):
        w, q, err, pruned = carry
        if nm is not None:  # at a group's first row, choose its mask from the updated rows
            rows = jax.lax.dynamic_slice_in_dim(w, i, m) ** 2
            sal = rows / jax.lax.dynamic_slice_in_dim(d_b, i, m)[:, None] ** 2
            group = _lowest(sal, m - nm[0], axis=0)
            old = jax.lax.dynamic_slice_in_dim(pruned, i, m)
            pruned = jax.lax.dynamic_update_slice_in_dim(
                pruned, jnp.where(i % m == 0, group, old), i, axis=0
            )
        w_i = w[i]
        q_i = jnp.where(pruned[i], 0.0, w_i)
        e_i = (w_i - q_i) / d_b[i]
        w = w - u_bb[i][:, None] * e_i[None, :]  # U is upper: rows before i are untouched
        return w, q.at[i].set(q_i), err.at[i].set(e_i), pruned

    zeros = jnp.zeros_like(w_bN)
    _, q, err, pruned = jax.lax.fori_loop(0, b, row, (w_bN, zeros, zeros, pruned))
    return q, err, pruned


def sparsegpt(
    w_KN: Array,
    h_KK: Array,
    *,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    block: int = 128,
    damp: float = 0.01,
) -> tuple[Array, Array]:
    """(pruned weights [K, N] in w's dtype, keep mask [K, N]) for one matrix.

    `sparsity`: fraction pruned per block (unstructured); `nm=(n, m)`: keep n of every m
    inputs per output instead (2:4). `block` must be a multiple of m under N:M."""
    _check(w_KN, h_KK, sparsity, nm, block)
    w, u = _prepare(jnp.asarray(w_KN), jnp.asarray(h_KK, jnp.float32), damp)
    k_in = w.shape[0]
    qs, masks = [], []
    for start in range(0, k_in, block):
        stop = min(start + block, k_in)
        u_bb = u[start:stop, start:stop]
        if nm is None:
            pruned = _block_mask(w[start:stop], jnp.diag(u_bb), sparsity)
        else:
            pruned = np.zeros((stop - start, w.shape[1]), bool)
        q, err, pruned = _block(w[start:stop], u_bb, jnp.asarray(pruned), nm)
        w = w.at[stop:].add(-u[start:stop, stop:].T @ err)  # the lazy batch update
        qs.append(q)
        masks.append(~pruned)
    keep = jnp.concatenate(masks)
    return jnp.where(keep, jnp.concatenate(qs), 0.0).astype(w_KN.dtype), keep


def _check(w_KN, h_KK, sparsity, nm, block) -> None:
    k_in = w_KN.shape[0]
    if w_KN.ndim != 2 or h_KK.shape != (k_in, k_in):
        raise ValueError(f"sparsegpt: weights {w_KN.shape} [K, N] need a [K, K] Hessian, "
                         f"got {h_KK.shape}")  # fmt: skip
    if nm is None and not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsegpt: {sparsity=} must lie in [0, 1)")
    if nm is not None and (block % nm[1] or k_in % nm[1] or not 0 < nm[0] < nm[1]):
        raise ValueError(f"sparsegpt: N:M {nm} needs 0 < N < M, M dividing {block=} and K={k_in}")


def sparsegpt_reference(
    w_KN: np.ndarray,
    h_KK: np.ndarray,
    *,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    block: int = 128,
    damp: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy float64 SparseGPT: rows one by one, the whole trailing part updated per row
    (no lazy batching), so it checks the blocked `lax` version's bookkeeping."""
    w, h = np.array(w_KN, np.float64), np.array(h_KK, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    h += damp * np.mean(np.diag(h)) * np.eye(len(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    k_in = w.shape[0]
    keep = np.ones(w.shape, bool)
    for start in range(0, k_in, block):
        stop = min(start + block, k_in)
        d = np.diag(u)[start:stop, None]
        if nm is None:
            sal = (w[start:stop] ** 2 / d**2).reshape(-1)
            order = np.argsort(sal, kind="stable")[: round(sparsity * sal.size)]
            keep[start:stop].reshape(-1)[order] = False
        for i in range(start, stop):
            if nm is not None and (i - start) % nm[1] == 0:
                sal = w[i : i + nm[1]] ** 2 / np.diag(u)[i : i + nm[1], None] ** 2
                low = np.argsort(sal, axis=0, kind="stable")[: nm[1] - nm[0]]
                np.put_along_axis(keep[i : i + nm[1]], low, False, axis=0)
            err = np.where(keep[i], 0.0, w[i]) / u[i, i]
            w[i:] -= np.outer(u[i, i:], err)
            w[i] = np.where(keep[i], w[i], 0.0)
    return w, keep
