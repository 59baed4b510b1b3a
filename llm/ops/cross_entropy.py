"""Token cross-entropy: the plain reference and the chunked fast path, with two stabilisers:
  * z-loss: `z_coef * logsumexp(logits)^2` per token keeps the softmax normaliser near 1
    (PaLM, Chowdhery et al. 2022, sec. 5).
  * label smoothing: the target is `(1 - eps) * one_hot + eps / V` (Szegedy et al. 2016).

`cross_entropy_chunked` is the fast path for large vocabularies: it never holds more than
`chunk_size x V` logits, because each chunk's logits are recomputed in the backward pass
(`jax.checkpoint`) rather than stored (the "cut cross-entropy" idea, Wijmans et al. 2024,
done with plain XLA). `cross_entropy_plain` is the reference it is tested against.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from llm.typing import Array


def token_losses(
    logits_TV: Array, targets_T: Array, z_coef: float = 0.0, smoothing: float = 0.0
) -> tuple[Array, Array]:
    """Per-token (training loss, plain cross-entropy) from logits, computed in float32."""
    logits_TV = logits_TV.astype(jnp.float32)
    lse_T = jax.nn.logsumexp(logits_TV, axis=-1)
    target_T = jnp.take_along_axis(logits_TV, targets_T[:, None], axis=-1)[:, 0]
    ce_T = lse_T - target_T
    loss_T = ce_T
    if smoothing:
        uniform_T = lse_T - jnp.mean(logits_TV, axis=-1)
        loss_T = (1.0 - smoothing) * ce_T + smoothing * uniform_T
    if z_coef:
        loss_T = loss_T + z_coef * jnp.square(lse_T)
    return loss_T, ce_T


def cross_entropy_plain(
    logits_BLV: Array,
    targets_BL: Array,
    mask_BL: Array,
    *,
    z_coef: float = 0.0,
    smoothing: float = 0.0,
) -> tuple[Array, Array]:
    """Reference: (masked sum of training loss, masked sum of plain CE) from full logits."""
    V = logits_BLV.shape[-1]
    loss_T, ce_T = token_losses(
        logits_BLV.reshape(-1, V), targets_BL.reshape(-1), z_coef, smoothing
    )
    mask_T = mask_BL.reshape(-1).astype(jnp.float32)
    return jnp.sum(loss_T * mask_T), jnp.sum(ce_T * mask_T)


def cross_entropy_chunked(
    unembed: Callable[[Array], Array],
    hidden_BLD: Array,
    targets_BL: Array,
    mask_BL: Array,
    *,
    chunk_size: int,
    z_coef: float = 0.0,
    smoothing: float = 0.0,
) -> tuple[Array, Array]:
    """Same sums as `cross_entropy_plain(unembed(hidden))`, holding one chunk of logits at a time.

    Tokens are flattened and padded (with mask 0) to a multiple of `chunk_size`; a scan over
    chunks computes each chunk's logits, reduces them to per-token losses and discards them.
    """
    B, L, D = hidden_BLD.shape
    T = B * L
    n_chunks = -(-T // chunk_size)
    pad = n_chunks * chunk_size - T
    h_TD = jnp.pad(hidden_BLD.reshape(T, D), ((0, pad), (0, 0)))
    y_T = jnp.pad(targets_BL.reshape(T), (0, pad))
    m_T = jnp.pad(mask_BL.reshape(T).astype(jnp.float32), (0, pad))

    @jax.checkpoint
    def chunk_sums(h_CD: Array, y_C: Array, m_C: Array) -> tuple[Array, Array]:
        logits_CV = unembed(h_CD[None])[0]
        loss_C, ce_C = token_losses(logits_CV, y_C, z_coef, smoothing)
        return jnp.sum(loss_C * m_C), jnp.sum(ce_C * m_C)

    def body(carry: tuple[Array, Array], xs: tuple[Array, Array, Array]):
        loss, ce = chunk_sums(*xs)
        return (carry[0] + loss, carry[1] + ce), None

    zero = jnp.zeros((), jnp.float32)
    shaped = (
        h_TD.reshape(n_chunks, chunk_size, D),
        y_T.reshape(n_chunks, chunk_size),
        m_T.reshape(n_chunks, chunk_size),
    )
    (loss, ce), _ = jax.lax.scan(body, (zero, zero), shaped)
    return loss, ce
