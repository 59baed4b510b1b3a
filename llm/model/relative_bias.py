"""T5's bucketed relative position bias (Raffel et al., 2020, arXiv:1910.10683, sec. 2.1).

Instead of position embeddings, every attention logit gets a learned scalar per head that
depends only on the distance between key and query, `delta = pos_k - pos_q`. Distances are
grouped into R buckets: half of them hold the exact small distances 0..R/2-1, the other half
cover R/2 .. `max_distance` in logarithmically growing bins, and anything farther shares the
last bucket. A bidirectional stack (the encoder) spends half the buckets on keys after the
query (delta > 0); a causal one (the decoder) never sees those and uses all R buckets for
delta <= 0. The table [R, N] lives once per stack and its bias is computed once and added in
every layer of that stack, as T5 does; cross-attention has no position bias.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from llm.typing import Array


def relative_bucket(
    delta: Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
    """int32 bucket in [0, num_buckets) of each relative position `delta = pos_k - pos_q`.

    The arithmetic (float32 log, truncation toward zero) is Mesh TensorFlow's, which every
    released T5 checkpoint was trained with, so imported tables index the same buckets."""
    delta = delta.astype(jnp.int32)
    bucket = jnp.zeros_like(delta)
    if bidirectional:
        num_buckets //= 2
        bucket = jnp.where(delta > 0, num_buckets, 0)
        distance = jnp.abs(delta)
    else:
        distance = -jnp.minimum(delta, 0)
    max_exact = num_buckets // 2
    # log-spaced bins above max_exact; distance clamped to 1 where the exact branch is taken
    far = jnp.maximum(distance, 1).astype(jnp.float32)
    log_bin = (
        jnp.log(far / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    large = jnp.minimum(max_exact + log_bin.astype(jnp.int32), num_buckets - 1)
    return bucket + jnp.where(distance < max_exact, distance, large)


def relative_bias(
    table_RN: Array,
    q_positions_BL: Array,
    kv_positions_BS: Array,
    *,
    bidirectional: bool,
    max_distance: int,
) -> Array:
    """bias_BNLS[b, n, l, s] = table[bucket(kv_pos[b, s] - q_pos[b, l]), n], float32."""
    delta_BLS = kv_positions_BS[:, None, :] - q_positions_BL[:, :, None]
    bucket_BLS = relative_bucket(
        delta_BLS,
        bidirectional=bidirectional,
        num_buckets=table_RN.shape[0],
        max_distance=max_distance,
    )
    bias_BLSN = jnp.take(table_RN.astype(jnp.float32), bucket_BLS, axis=0)
    return bias_BLSN.transpose(0, 3, 1, 2)
