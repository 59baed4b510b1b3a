"""Attention in plain XLA with flash attention's backward: recompute the probabilities.

Reverse-mode autodiff of the reference (`attention_xla.py`) keeps every [B, N, L, S]
intermediate (logits, masked logits, probabilities) alive from the forward to the backward.
Under the layer scan those are stacked per layer, and on CPU writing and reading them costs
more than the matmuls around them (docs/benchmarks.md, train step profile). Here a `custom_vjp`
saves only q, k, v, the output and the per-row log-sum-exp, as FlashAttention does
(Dao, 2023, arXiv:2307.08691, sec. 3.1.2), and the backward rebuilds the probabilities as
exp(logits - lse) with one extra q·kᵀ:

    dV = Pᵀ dO        dP = dO Vᵀ        dS = P ∘ (dP - rowsum(dO ∘ O))
    dQ = dS K / √H    dK = dSᵀ Q / √H   (dS also through soft-capping: × (1 - tanh²))

Everything runs on whole [L, S] blocks (no tiling): it is for backends where XLA's own matmuls
are the fast path (CPU). Same features as the reference except attention dropout. Heads are
grouped (B, K, G, ·) once at the start so every contraction is a plain batched matmul.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llm.ops.attention_xla import NEG_INF
from llm.typing import Array


def flash_attention_xla(
    q_BLNH: Array,
    k_BSKH: Array,
    v_BSKH: Array,
    mask_BLS: Array,
    *,
    bias_BNLS: Array | None = None,
    softcap: float | None = None,
    causal_blocks: int = 1,
) -> Array:
    """softmax(q kᵀ / √H [+ bias], masked) v, equal to `attention_reference`; rows that see no
    key give zeros. Gradients flow to q, k, v and the bias; the mask has none.

    `causal_blocks` > 1 (self-attention only: as many keys as queries) splits the queries
    into that many blocks and lets block i read only the keys up to its own last row,
    skipping the upper triangle: (n + 1) / 2n of the work. The caller's mask must hide every
    key at a later index than its query (`attention` adds that rule to causal
    self-attention). Skipping by a check of the mask at run time was tried: the `lax.cond`
    it needs cost XLA's CPU backend more than the skipped blocks saved (docs/LOG.md).
    """
    B, L, N, H = q_BLNH.shape
    S, K = k_BSKH.shape[1], k_BSKH.shape[2]
    if causal_blocks > 1 and S != L:
        raise ValueError(f"causal_blocks needs as many keys as queries; got {L=} {S=}")
    q_BKGLH = q_BLNH.reshape(B, L, K, N // K, H).transpose(0, 2, 3, 1, 4)
    k_BKSH, v_BKSH = (t.transpose(0, 2, 1, 3) for t in (k_BSKH, v_BSKH))
    bias_BKGLS = None if bias_BNLS is None else bias_BNLS.reshape(B, K, N // K, L, -1)
    spans = query_spans(L, S, causal_blocks)
    out_BKGLH = _attend(q_BKGLH, k_BKSH, v_BKSH, mask_BLS, bias_BKGLS, softcap, spans)
    return out_BKGLH.transpose(0, 3, 1, 2, 4).reshape(B, L, N, H)


def causal_block_count(L: int, min_block: int = 64, max_blocks: int = 8) -> int:
    """Query blocks for causal skipping: blocks of at least `min_block` rows (smaller ones
    make XLA's matmuls inefficient), at most `max_blocks` (each is unrolled in the graph)."""
    return max(1, min(max_blocks, L // min_block))


def query_spans(L: int, S: int, n_blocks: int) -> tuple[tuple[int, int, int], ...]:
    """(first row, end row, end key) per query block; one block sees every key."""
    if n_blocks <= 1:
        return ((0, L, S),)
    ends = [round(L * (i + 1) / n_blocks) for i in range(n_blocks)]
    return tuple((start, end, end) for start, end in zip([0, *ends[:-1]], ends, strict=True))


def _block(q_BKGLH, k_BKSH, v_BKSH, mask_BLS, bias_BKGLS, span):
    """The slices of one query block and the keys it reads."""
    r0, r1, s1 = span
    bias = None if bias_BKGLS is None else bias_BKGLS[..., r0:r1, :s1]
    keys = (slice(None), slice(None), slice(0, s1))
    return q_BKGLH[..., r0:r1, :], k_BKSH[keys], v_BKSH[keys], mask_BLS[:, r0:r1, :s1], bias


FEW_QUERIES = 8  # up to this many query rows per kv head: logits computed as K q'


def _logits(q_BKGLH, k_BKSH, mask_BLS, bias_BKGLS, softcap):
    """Masked float32 logits, and tanh of the capped logits (for the backward) if capping.

    For a few queries (decoding) the product runs as K q' and the small [S, G*L] result is
    transposed: XLA:CPU copies a matmul's big operand transposed when it is contracted on
    its last axis as the right operand, which for q K' is the whole cache of every layer on
    every step; as the left operand of K q' it is read in place.
    """
    H = q_BKGLH.shape[-1]
    if q_BKGLH.shape[2] * q_BKGLH.shape[3] <= FEW_QUERIES:
        s_BKSGL = jnp.einsum(
            "BKSH,BKGLH->BKSGL", k_BKSH, q_BKGLH, preferred_element_type=jnp.float32
        )
        s_BKGLS = s_BKSGL.transpose(0, 1, 3, 4, 2) * (H**-0.5)
    else:
        s_BKGLS = jnp.einsum(
            "BKGLH,BKSH->BKGLS", q_BKGLH, k_BKSH, preferred_element_type=jnp.float32
        ) * (H**-0.5)
    tanh_BKGLS = None
    if softcap is not None:
        tanh_BKGLS = jnp.tanh(s_BKGLS / softcap)
        s_BKGLS = softcap * tanh_BKGLS
    if bias_BKGLS is not None:
        s_BKGLS = s_BKGLS + bias_BKGLS
    return jnp.where(mask_BLS[:, None, None], s_BKGLS, NEG_INF), tanh_BKGLS


def _forward_block(q_BKGLH, k_BKSH, v_BKSH, mask_BLS, bias_BKGLS, softcap):
    s_BKGLS, _ = _logits(q_BKGLH, k_BKSH, mask_BLS, bias_BKGLS, softcap)
    visible_B11L1 = mask_BLS.any(-1)[:, None, None, :, None]
    m_BKGL1 = jnp.max(s_BKGLS, axis=-1, keepdims=True)
    p_BKGLS = jnp.exp(s_BKGLS - m_BKGL1)
    l_BKGL1 = jnp.sum(p_BKGLS, axis=-1, keepdims=True)
    out_BKGLH = jnp.einsum("BKGLS,BKSH->BKGLH", p_BKGLS.astype(v_BKSH.dtype), v_BKSH)
    out_BKGLH = jnp.where(visible_B11L1, out_BKGLH / l_BKGL1, 0).astype(q_BKGLH.dtype)
    # rows that see nothing get lse = +inf, so the backward's exp(s - lse) is exactly 0 there
    lse_BKGL1 = jnp.where(visible_B11L1, m_BKGL1 + jnp.log(l_BKGL1), jnp.inf)
    return out_BKGLH, lse_BKGL1


def _forward(q_BKGLH, k_BKSH, v_BKSH, mask_BLS, bias_BKGLS, softcap, spans):
    blocks = [
        _forward_block(*_block(q_BKGLH, k_BKSH, v_BKSH, mask_BLS, bias_BKGLS, span), softcap)
        for span in spans
    ]
    if len(blocks) == 1:
        return blocks[0]
    return tuple(jnp.concatenate(parts, axis=3) for parts in zip(*blocks, strict=True))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attend(q_BKGLH, k_BKSH, v_BKSH, mask_BLS, bias_BKGLS, softcap, spans):
    return _forward(q_BKGLH, k_BKSH, v_BKSH, mask_BLS, bias_BKGLS, softcap, spans)[0]


def _attend_fwd(q_BKGLH, k_BKSH, v_BKSH, mask_BLS, bias_BKGLS, softcap, spans):
    out_BKGLH, lse_BKGL1 = _forward(q_BKGLH, k_BKSH, v_BKSH, mask_BLS, bias_BKGLS, softcap, spans)
    return out_BKGLH, (q_BKGLH, k_BKSH, v_BKSH, mask_BLS, bias_BKGLS, out_BKGLH, lse_BKGL1)


def _backward_block(q_BKGLH, k_BKSH, v_BKSH, mask_BLS, bias_BKGLS, softcap, o, lse, do):
    """dq, dk, dv, dbias of one query block from its output `o`, log-sum-exp and dO."""
    H = q_BKGLH.shape[-1]
    s_BKGLS, tanh_BKGLS = _logits(q_BKGLH, k_BKSH, mask_BLS, bias_BKGLS, softcap)
    p_BKGLS = jnp.exp(s_BKGLS - lse)  # masked logits are -big: exp underflows to 0
    delta_BKGL1 = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), -1, keepdims=True)
    dv_BKSH = jnp.einsum("BKGLS,BKGLH->BKSH", p_BKGLS.astype(v_BKSH.dtype), do)
    dp_BKGLS = jnp.einsum("BKGLH,BKSH->BKGLS", do, v_BKSH, preferred_element_type=jnp.float32)
    ds_BKGLS = p_BKGLS * (dp_BKGLS - delta_BKGL1)  # gradient w.r.t. the (biased) logits
    dbias = None if bias_BKGLS is None else ds_BKGLS.astype(bias_BKGLS.dtype)
    if tanh_BKGLS is not None:
        ds_BKGLS = ds_BKGLS * (1.0 - jnp.square(tanh_BKGLS))
    ds_BKGLS = (ds_BKGLS * H**-0.5).astype(q_BKGLH.dtype)
    dq_BKGLH = jnp.einsum("BKGLS,BKSH->BKGLH", ds_BKGLS, k_BKSH)
    dk_BKSH = jnp.einsum("BKGLS,BKGLH->BKSH", ds_BKGLS, q_BKGLH)
    return dq_BKGLH, dk_BKSH, dv_BKSH, dbias


def _attend_bwd(softcap, spans, residuals, dout_BKGLH):
    """Gradients block by block; key gradients summed over the blocks that read each key."""
    q_BKGLH, k_BKSH, v_BKSH, mask_BLS, bias_BKGLS, out, lse = residuals
    S = k_BKSH.shape[2]
    dq, dk, dv, dbias = [], 0.0, 0.0, []
    for r0, r1, s1 in spans:
        rows = (Ellipsis, slice(r0, r1), slice(None))
        block = _block(q_BKGLH, k_BKSH, v_BKSH, mask_BLS, bias_BKGLS, (r0, r1, s1))
        dq_i, dk_i, dv_i, dbias_i = _backward_block(
            *block, softcap, out[rows], lse[rows], dout_BKGLH[rows]
        )
        keys = [(0, 0)] * 2 + [(0, S - s1), (0, 0)]  # keys past the block's end: no gradient
        dq.append(dq_i)
        dk = dk + jnp.pad(dk_i.astype(jnp.float32), keys)
        dv = dv + jnp.pad(dv_i.astype(jnp.float32), keys)
        if dbias_i is not None:
            dbias.append(jnp.pad(dbias_i, [(0, 0)] * 4 + [(0, S - s1)]))
    dbias_BKGLS = None if bias_BKGLS is None else jnp.concatenate(dbias, axis=3)
    dq_BKGLH = jnp.concatenate(dq, axis=3)
    return dq_BKGLH, dk.astype(k_BKSH.dtype), dv.astype(v_BKSH.dtype), None, dbias_BKGLS


_attend.defvjp(_attend_fwd, _attend_bwd)
