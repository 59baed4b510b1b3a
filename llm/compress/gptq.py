"""GPTQ: one-shot weight quantisation from second-order information, as a `lax.fori_loop`.

    h_KK = hessian(x_MK)                                   # summed over calibration batches
    codes_KN, scales_GN, offsets_GN = gptq_matrix(w_KN, h_KK, fmt="int4", bits=4, group=128)
    layer = gptq_layer(cfg, layer, x_BLD, spec)            # every block Linear (a LayerMethod)

Design (Frantar et al. 2022, "GPTQ", arXiv:2210.17323; the authors' `gptq.py` is "the
reference" below):
- **Objective** (sec. 3): for a Linear with inputs X [M, K] and weight W [K, N], find codes Q
  minimising ||X W - X Q||^2. Its Hessian in W is H = 2 X^T X [K, K], the same for every
  output column, so one inverse serves all N columns. `hessian` sums 2 X^T X over batches;
  its scale is irrelevant (dampening is relative to its diagonal).
- **Axes**: our weights are [K = inputs, N = outputs], so GPTQ's "columns" (the input features
  it walks through) are our *rows*. Row k is quantised, its error e_k = (w_k - q_k) / U[k, k]
  is spread over the rows still to come: w_j -= U[k, j] e_k for j > k (OBS update, eq. 3).
- **Cholesky of the inverse** (sec. 4, step 3): U = upper Cholesky factor of (H + lambda I)^-1
  holds every row of the successive inverses the update needs; lambda = damp x mean(diag H)
  (the reference's `percdamp`, default 1%).
- **Dead inputs**: an input that is zero on every calibration token (diag H = 0) gets
  H[k, k] = 1 and its weight row set to 0, as the reference does.
- **Lazy batch updates** (sec. 4, step 2): rows are processed in blocks of `block`; inside a
  block updates touch only the block (an inner `fori_loop`), and the rest of W receives the
  block's accumulated errors in one matmul U[block, :]^T E. Both loops are `lax.fori_loop`s,
  so compile time does not grow with K (qwix's GPTQ unrolls a Python loop: 68 s to compile
  one 128 x 256 matrix; issue 19). K is padded to a multiple of `block` with rows whose error
  is forced to zero.
- **Act-order** (the reference's `--act-order`): rows are visited in descending diag H, so
  the inputs with the most energy are quantised first while many rows remain to absorb their
  error. We use **static groups** (the reference's `--static-groups`): each group's grid
  (scales, offsets) is chosen by RTN from the original weights (dead rows zeroed) before the
  loop, over the *natural* order of K. A permuted row still uses its own group's grid, so no
  per-row group index (`g_idx`) is stored and the format is exactly `llm.ops.quantized`'s.
  Without act-order the grids are static too (the reference recomputes them from the updated
  weights at each group start; static grids keep one code path; how much that costs is not
  measured here).
- **Formats**: grids, codes and decoding are `llm.ops.quantized`'s (`choose_scales`,
  `encode`, `decode`), so a GPTQ code decodes exactly like an RTN one.

`gptq_matrix_reference` is the plain algorithm (numpy, float64, one row at a time, no lazy
batching), against which the fast version is tested.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from llm.compress import calibration
from llm.compress.calibration import get_path, set_path
from llm.compress.spec import PtqSpec
from llm.config import ModelConfig
from llm.ops import quantized as qz
from llm.typing import Array, PyTree

HIGHEST = jax.lax.Precision.HIGHEST


@jax.jit
def hessian(x_MK: Array) -> Array:
    """2 X^T X [K, K] in float32 of one batch of a Linear's inputs (sum it over batches)."""
    x = x_MK.astype(jnp.float32)
    return 2.0 * jnp.matmul(x.T, x, precision=HIGHEST)


def _check(k: int, fmt: str, bits: int, group: int, damp: float, block: int) -> int:
    """The group size in use (0 -> K), or ValueError naming the bad argument."""
    qz.code_range(fmt, bits)  # names an unknown format or a bits/format mismatch
    g = group or k
    if g < 1 or k % g:
        raise ValueError(f"gptq: {group=} must divide the input features K={k} (0 = K)")
    if not damp >= 0 or block < 1:
        raise ValueError(f"gptq: {damp=} must be >= 0 and {block=} >= 1")
    return g


def _prepare(w_KN: Array, h_KK: Array, group: int, fmt: str, bits: int):
    """Dead inputs handled (weight rows 0, H[k, k] = 1) and the static grids from the result."""
    k, n = w_KN.shape
    diag_K = jnp.diag(h_KK)
    dead_K = diag_K == 0
    h = h_KK + jnp.diag(jnp.where(dead_K, 1.0, 0.0))
    w = jnp.where(dead_K[:, None], 0.0, w_KN)
    scales_GN, offsets_GN = qz.choose_scales(w.reshape(k // group, group, n), fmt, bits)
    return w, h, scales_GN, offsets_GN


def _inverse_cholesky(h_KK: Array, damp: float) -> Array:
    """Upper U with U^T U = (H + damp * mean(diag H) I)^-1 (sec. 4, step 3)."""
    k = h_KK.shape[0]
    h = h_KK + damp * jnp.mean(jnp.diag(h_KK)) * jnp.eye(k, dtype=h_KK.dtype)
    lower = jnp.linalg.cholesky(h)
    hinv = jax.scipy.linalg.cho_solve((lower, True), jnp.eye(k, dtype=h.dtype))
    return jnp.linalg.cholesky((hinv + hinv.T) / 2).T


def _pad(w_KN: Array, u_KK: Array, gidx_K: Array, kp: int):
    """Rows K..kp appended: zero weights, identity in U (no coupling), group 0."""
    k = w_KN.shape[0]
    w = jnp.pad(w_KN, ((0, kp - k), (0, 0)))
    u = jnp.pad(u_KK, ((0, kp - k), (0, kp - k)))
    u = u + jnp.diag(jnp.where(jnp.arange(kp) >= k, 1.0, 0.0))
    return w, u, jnp.pad(gidx_K, (0, kp - k))


def _lazy_loop(w_KN, u_KK, gidx_K, scales_GN, offsets_GN, *, k, fmt, bits, block):
    """Codes [Kp, N] of the (permuted, padded) rows, in blocks of `block` (sec. 4, step 2)."""
    kp, n = w_KN.shape

    def row_step(i, carry, i1, u1, gid_b):
        w1, codes1, err1 = carry
        g = gid_b[i]
        s_N, o_N = scales_GN[g], (None if offsets_GN is None else offsets_GN[g])
        code_N = qz.encode(w1[i], s_N, o_N, fmt, bits)
        q_N = qz.decode(code_N, s_N, o_N, fmt)
        e_N = jnp.where(i1 + i < k, (w1[i] - q_N) / u1[i, i], 0.0)
        w1 = w1 - u1[i][:, None] * e_N[None, :]  # U upper: rows before i are untouched
        return w1, codes1.at[i].set(code_N), err1.at[i].set(e_N)

    def block_step(b, carry):
        w, codes = carry
        i1 = b * block
        w1 = jax.lax.dynamic_slice(w, (i1, 0), (block, n))
        u1 = jax.lax.dynamic_slice(u_KK, (i1, i1), (block, block))
        gid_b = jax.lax.dynamic_slice(gidx_K, (i1,), (block,))
        init = (w1, jnp.zeros((block, n), jnp.int32), jnp.zeros((block, n), jnp.float32))
        step = functools.partial(row_step, i1=i1, u1=u1, gid_b=gid_b)
        _, codes1, err1 = jax.lax.fori_loop(0, block, step, init)
        u_rows = jax.lax.dynamic_slice(u_KK, (i1, 0), (block, kp))
        w = w - jnp.matmul(u_rows.T, err1, precision=HIGHEST)  # rows < i1 get 0; done rows unused
        return w, jax.lax.dynamic_update_slice(codes, codes1, (i1, 0))

    codes0 = jnp.zeros((kp, n), jnp.int32)
    return jax.lax.fori_loop(0, kp // block, block_step, (w_KN, codes0))[1]


@functools.partial(jax.jit, static_argnames=("fmt", "bits", "group", "act_order", "block"))
def _gptq(w_KN, h_KK, damp, *, fmt, bits, group, act_order, block):
    k = w_KN.shape[0]
    w, h, scales_GN, offsets_GN = _prepare(
        w_KN.astype(jnp.float32), h_KK.astype(jnp.float32), group, fmt, bits
    )
    perm_K = jnp.argsort(-jnp.diag(h), stable=True) if act_order else jnp.arange(k)
    u_KK = _inverse_cholesky(h[perm_K][:, perm_K], damp)
    kp = -(-k // block) * block
    w_p, u_p, gidx_p = _pad(w[perm_K], u_KK, perm_K // group, kp)
    codes = _lazy_loop(w_p, u_p, gidx_p, scales_GN, offsets_GN, k=k, fmt=fmt, bits=bits,
                       block=block)  # fmt: skip
    codes_KN = jnp.zeros((k, w.shape[1]), jnp.int32).at[perm_K].set(codes[:k])
    return codes_KN, scales_GN, offsets_GN, jnp.all(jnp.isfinite(u_KK))


def gptq_matrix(
    w_KN: Array,
    h_KK: Array,
    *,
    fmt: str,
    bits: int,
    group: int,
    act_order: bool = True,
    damp: float = 0.01,
    block: int = 128,
) -> tuple[Array, Array, Array | None]:
    """GPTQ codes of one weight matrix in `llm.ops.quantized`'s format.

    w_KN: the weight [K inputs, N outputs]; h_KK: `hessian` of its inputs. `group` values of K
    share a grid per output column (0: all of K). Returns (codes_KN int32 unpacked,
    scales_GN, offsets_GN or None), G = K // group, ready for `quantized.from_codes`.
    Raises ValueError if (H + lambda I) is not positive definite (raise `damp`)."""
    k, n = w_KN.shape
    if h_KK.shape != (k, k):
        raise ValueError(f"gptq: Hessian shape {h_KK.shape} does not match K={k} of {w_KN.shape}")
    g = _check(k, fmt, bits, group, damp, block)
    codes, scales, offsets, ok = _gptq(w_KN, h_KK, damp, fmt=fmt, bits=bits, group=g,
                                       act_order=act_order, block=min(block, k))  # fmt: skip
    if not bool(ok):
        raise ValueError(f"gptq: the damped Hessian ({damp=}) of a {k}x{n} weight is not "
                         "positive definite; raise damp")  # fmt: skip
    return codes, scales, offsets


def gptq_matrix_reference(
    w_KN, h_KK, *, fmt: str, bits: int, group: int, act_order: bool = True, damp: float = 0.01
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The plain algorithm: numpy float64, one row at a time, every later row updated at once."""
    k, n = np.shape(w_KN)
    g = _check(k, fmt, bits, group, damp, 1)
    w, h, scales, offsets = (None if a is None else np.asarray(a, np.float64) for a in
                             _prepare(jnp.asarray(w_KN, jnp.float32),
                                      jnp.asarray(h_KK, jnp.float32), g, fmt, bits))  # fmt: skip
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    w, h = w[perm], h[perm][:, perm]
    h = h + damp * np.mean(np.diag(h)) * np.eye(k)
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    codes = np.zeros((k, n), np.int32)
    for r in range(k):
        s = scales[perm[r] // g]
        o = None if offsets is None else offsets[perm[r] // g]
        codes[r] = np.asarray(qz.encode(jnp.asarray(w[r], jnp.float32), s, o, fmt, bits))
        q = np.asarray(qz.decode(jnp.asarray(codes[r]), s, o, fmt), np.float64)
        w[r + 1 :] -= np.outer(u[r, r + 1 :], (w[r] - q) / u[r, r])
    out = np.zeros_like(codes)
    out[perm] = codes
    return out, scales, offsets


def block_linears(cfg: ModelConfig, layer: PyTree) -> dict[str, tuple[int, int]]:
    """{"attn/q/w": (n_in, n_out), ...}: the block Linears `PtqSpec` methods quantise."""
    out = calibration.block_layouts(cfg)
    missing = [p for p in out if get_path(layer, p) is None]
    if missing:
        raise ValueError(f"block Linears {missing} of the model config are not in the layer tree")
    return out


SHARED_INPUTS = {"attn/k/w": "attn/q/w", "attn/v/w": "attn/q/w", "mlp/gate/w": "mlp/up/w"}


def input_of(inputs: dict[str, Array], path: str) -> str:
    """The key of `calibration.linear_inputs` holding `path`'s input: q, k and v read the
    same x (so do gate and up), and share one Hessian."""
    for key in (SHARED_INPUTS.get(path), path):
        if key in inputs:
            return key
    raise ValueError(f"no calibration input for Linear {path!r}; have {sorted(inputs)}")


def matrix_view(w: Array, n_in: int) -> Array:
    """A Linear weight (*in_dims, *out_dims) as [K, N]."""
    k = int(np.prod(w.shape[:n_in]))
    return w.reshape(k, -1)


def gptq_layer(cfg: ModelConfig, layer: PyTree, x_BLD: Array, spec: PtqSpec) -> PyTree:
    """One block with every Linear GPTQ-quantised, each from the Hessian of its own input
    (Linears sharing an input share its Hessian). A `LayerMethod`."""
    inputs = calibration.linear_inputs(cfg, layer, x_BLD)
    hessians: dict[str, Array] = {}
    for path, (n_in, n_out) in block_linears(cfg, layer).items():
        key = input_of(inputs, path)
        if key not in hessians:
            hessians[key] = hessian(inputs[key])
        w = get_path(layer, path)
        codes_KN, scales_GN, offsets_GN = gptq_matrix(
            matrix_view(w, n_in), hessians[key], fmt=spec.fmt, bits=spec.bits,
            group=spec.group, act_order=spec.act_order, damp=spec.damp, block=spec.block,
        )  # fmt: skip
        out_dims = w.shape[n_in:]
        q = qz.from_codes(
            codes_KN.reshape(w.shape), scales_GN.reshape(-1, *out_dims),
            None if offsets_GN is None else offsets_GN.reshape(-1, *out_dims),
            fmt=spec.fmt, bits=spec.bits, group=spec.group or codes_KN.shape[0], n_in=n_in,
            n_out=n_out, dtype=str(w.dtype),
        )  # fmt: skip
        layer = set_path(layer, path, q)
    return layer
