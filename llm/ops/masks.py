"""Which keys each query may attend to, from positions and segment ids.

One rule covers training, packed sequences and decoding with a KV cache:
query i may see key j iff
  * same segment:   seg_q[i] == seg_k[j] and seg_k[j] != 0   (0 marks padding),
  * causal:         pos_k[j] <= pos_q[i]                     (positions, not indices, so a
                                                              decode step at position t sees
                                                              its cache 0..t),
  * sliding window: pos_q[i] - pos_k[j] < window              (the query itself counts).
  * prefix-LM:      the causal rule is waived for keys marked prefix (kv_prefix[j]): a
                    document's prefix is seen whole by every query of the document
                    (Raffel et al., 2020, arXiv:1910.10683, sec. 3.2.1; UniLM, Dong et al.,
                    2019, arXiv:1905.03197).
  * sparse pattern: with d = |pos_q[i] - pos_k[j]| and block size b (Child et al., 2019,
                    "Generating Long Sequences with Sparse Transformers", arXiv:1904.10509):
                      strided      d < b or d % b == 0   (the paper's two strided heads
                                                          merged into one mask, sec. 4.3)
                      block_local  pos_q // b == pos_k // b   (the local half of the "fixed"
                                                               pattern: attend within the block)
Positions restart at 0 for every packed document, so the same rule is right inside a pack.
"""

from __future__ import annotations

import jax.numpy as jnp

from llm.typing import Array


def default_positions(batch: int, length: int) -> Array:
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))


def attention_mask(
    q_segment_ids_BL: Array,
    kv_segment_ids_BS: Array,
    q_positions_BL: Array,
    kv_positions_BS: Array,
    *,
    causal: bool = True,
    sliding_window: int | None = None,
    pattern: str = "dense",
    block: int = 0,
    kv_prefix_BS: Array | None = None,
) -> Array:
    """Boolean mask_BLS: True where query l may attend to key s. `pattern` / `block`: a
    sparse pattern (`PATTERNS`); `kv_prefix_BS`: True on prefix keys (prefix-LM)."""
    q_seg = q_segment_ids_BL[:, :, None]
    k_seg = kv_segment_ids_BS[:, None, :]
    mask_BLS = (q_seg == k_seg) & (k_seg != 0)
    delta_BLS = q_positions_BL[:, :, None] - kv_positions_BS[:, None, :]
    if causal:
        seen_BLS = delta_BLS >= 0
        if kv_prefix_BS is not None:
            seen_BLS |= kv_prefix_BS[:, None, :]
        mask_BLS &= seen_BLS
    if sliding_window is not None:
        mask_BLS &= delta_BLS < sliding_window
    if pattern != "dense":
        mask_BLS &= sparse_pattern(q_positions_BL, kv_positions_BS, pattern, block)
    return mask_BLS


PATTERNS = ("dense", "strided", "block_local")


def sparse_pattern(q_positions_BL: Array, kv_positions_BS: Array, pattern: str, block: int):
    """mask_BLS of a sparse pattern alone (see the module docstring), from positions, so a
    decode step against a KV cache applies the same rule as the full forward."""
    if block <= 0:
        raise ValueError(f"sparse attention pattern {pattern!r} needs a positive {block=}")
    q_BL1, k_B1S = q_positions_BL[:, :, None], kv_positions_BS[:, None, :]
    if pattern == "strided":
        distance_BLS = jnp.abs(q_BL1 - k_B1S)
        return (distance_BLS < block) | (distance_BLS % block == 0)
    if pattern == "block_local":
        return q_BL1 // block == k_B1S // block
    raise ValueError(f"unknown attention pattern {pattern!r}; choose one of {PATTERNS}")


def index_causal_mask(length: int) -> Array:
    """mask_LL: True where the key's index is not after the query's (lower triangle)."""
    return jnp.tril(jnp.ones((length, length), bool))


def alibi_slopes(n_heads: int) -> Array:
    """Per-head ALiBi slopes (Press et al., 2022, arXiv:2108.12409), geometric in 2^(-8/n).

    For a head count that is not a power of two, the paper's recipe: the slopes of the next
    lower power of two, then every other slope of the next higher one.
    """

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    lower = 2 ** (n_heads.bit_length() - 1)
    slopes = power_of_two(lower)
    if lower != n_heads:
        slopes += power_of_two(2 * lower)[0::2][: n_heads - lower]
    return jnp.asarray(slopes, dtype=jnp.float32)


def alibi_bias(slopes_N: Array, q_positions_BL: Array, kv_positions_BS: Array) -> Array:
    """Additive bias_BNLS = -slope * distance, distance = |pos_q - pos_k|."""
    distance_BLS = jnp.abs(q_positions_BL[:, :, None] - kv_positions_BS[:, None, :])
    return -slopes_N[None, :, None, None] * distance_BLS[:, None].astype(jnp.float32)
