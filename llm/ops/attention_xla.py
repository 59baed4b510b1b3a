"""Plain attention in jnp: the reference every other backend is tested against.

Grouped-query attention without repeating K/V: queries are viewed as (K kv heads) x (G
queries per kv head) and contracted against the K kv heads directly (Ainslie et al., 2023,
arXiv:2305.13245). Logits and softmax are float32 whatever the input dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llm.typing import Array

NEG_INF = float(jnp.finfo(jnp.float32).min)


def attention_reference(
    q_BLNH: Array,
    k_BSKH: Array,
    v_BSKH: Array,
    mask_BLS: Array,
    *,
    bias_BNLS: Array | None = None,
    softcap: float | None = None,
    dropout_rate: float = 0.0,
    dropout_key: Array | None = None,
    rel_k_BLSH: Array | None = None,
    rel_v_BLSH: Array | None = None,
) -> Array:
    """softmax(q k^T / sqrt(H) [+ bias], masked) v; rows with no visible key give zeros.
    `rel_k_BLSH` / `rel_v_BLSH`: Shaw et al.'s relative key and value terms (`shaw_relative`),
    softmax(q (k + a^K)^T / sqrt(H)) (v + a^V) (arXiv:1803.02155, eqs. 3-4)."""
    probs_BNLS = attention_weights(
        q_BLNH, k_BSKH, mask_BLS, bias_BNLS=bias_BNLS, softcap=softcap, rel_k_BLSH=rel_k_BLSH
    )
    if dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_key, 1.0 - dropout_rate, probs_BNLS.shape)
        probs_BNLS = jnp.where(keep, probs_BNLS / (1.0 - dropout_rate), 0.0)
    out_BLNH = mix_values(probs_BNLS, v_BSKH)
    if rel_v_BLSH is not None:
        probs_BNLS = probs_BNLS.astype(rel_v_BLSH.dtype)
        out_BLNH += jnp.einsum("BNLS,BLSH->BLNH", probs_BNLS, rel_v_BLSH).astype(out_BLNH.dtype)
    return out_BLNH


def shaw_relative(table_RH: Array, q_positions_BL: Array, kv_positions_BS: Array) -> Array:
    """rel_BLSH = table[clip(pos_k - pos_q, -k, k) + k] with R = 2k + 1 rows: Shaw et al.'s
    a_ij = w_clip(j - i, k), from positions, so a decode step reads the same entries."""
    k = (table_RH.shape[0] - 1) // 2
    distance_BLS = kv_positions_BS[:, None, :] - q_positions_BL[:, :, None]
    return jnp.take(table_RH, jnp.clip(distance_BLS, -k, k) + k, axis=0)


def attention_weights(
    q_BLNH: Array,
    k_BSKH: Array,
    mask_BLS: Array,
    *,
    bias_BNLS: Array | None = None,
    softcap: float | None = None,
    scale: float | None = None,
    rel_k_BLSH: Array | None = None,
) -> Array:
    """The attention probabilities probs_BNLS in float32 (query head n = kv head n // G):
    each row sums to one over its visible keys; rows with none are zero. `scale` multiplies
    the logits (None: 1 / sqrt(H); T5 passes 1.0, its init absorbs the factor).
    `rel_k_BLSH`: Shaw's relative key a^K_ij of each (query, key) pair, shared by heads."""
    B, L, N, H = q_BLNH.shape
    S, K = k_BSKH.shape[1], k_BSKH.shape[2]
    q_BLKGH = q_BLNH.reshape(B, L, K, N // K, H)
    logits_BKGLS = jnp.einsum(
        "BLKGH,BSKH->BKGLS", q_BLKGH, k_BSKH, preferred_element_type=jnp.float32
    ) * (H**-0.5 if scale is None else scale)
    if rel_k_BLSH is not None:  # Shaw et al. 2018, eq. 4: q_i . (k_j + a^K_ij), scaled alike
        logits_BKGLS += jnp.einsum(
            "BLKGH,BLSH->BKGLS", q_BLKGH, rel_k_BLSH, preferred_element_type=jnp.float32
        ) * (H**-0.5 if scale is None else scale)
    if softcap is not None:
        logits_BKGLS = softcap * jnp.tanh(logits_BKGLS / softcap)
    if bias_BNLS is not None:
        logits_BKGLS += bias_BNLS.reshape(B, K, N // K, L, S)
    mask_B11LS = mask_BLS[:, None, None]
    logits_BKGLS = jnp.where(mask_B11LS, logits_BKGLS, NEG_INF)
    probs_BKGLS = jax.nn.softmax(logits_BKGLS, axis=-1)
    probs_BKGLS = jnp.where(mask_B11LS.any(-1, keepdims=True), probs_BKGLS, 0.0)
    return probs_BKGLS.reshape(B, N, L, S)


def mix_values(probs_BNLS: Array, v_BSKH: Array) -> Array:
    """out_BLNH = probs v, each query head reading its kv head's values."""
    B, N, L, S = probs_BNLS.shape
    K, H = v_BSKH.shape[2:]
    probs_BKGLS = probs_BNLS.reshape(B, K, N // K, L, S).astype(v_BSKH.dtype)
    return jnp.einsum("BKGLS,BSKH->BLKGH", probs_BKGLS, v_BSKH).reshape(B, L, N, H)
