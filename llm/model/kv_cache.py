"""A preallocated, static-shape key/value cache for incremental decoding.

Layout: cache slot s of a sequence holds the keys/values of the token at position s, so
`lengths_B[b]` valid entries sit in slots 0..lengths_B[b]-1 and everything above is garbage
masked out by kv segment id 0. That makes rollback (speculative decoding) a matter of
lowering `lengths_B`. Arrays are [layers, batch, kv heads, slots, head dim] (`_YBKSH`): each
(row, head) holds its slots contiguously, so a decode step multiplies every head's [S, H]
block with its queries in place; with slots before heads XLA copied (transposed) the whole
cache of every layer on every step, 16% of a batch-1 step (docs/LOG.md). The model hands
attention a transposed view, [B, S, K, H], which XLA folds away.

Keys are stored after RoPE, and only the K key/value heads (grouped-query attention keeps the
cache N/K times smaller than the query heads would). Every layer has its own slice along a
leading `layers` axis so the cache rides through the same `lax.scan` as the stacked block
params: each scan step writes the new tokens into its layer's slice of the carried cache, an
in-place update once the step function donates the cache.

A step feeds a block of new tokens [B, L]: right-padded, i.e. row b holds its valid tokens
first and padding (segment id 0) after. Token t of row b sits at position lengths_B[b] + t.

`KVCache` implements the `llm.model.cache.Cache` protocol, the only face generation code
sees; its arrays are read by the model alone (`step_layout`, `write_layer`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from llm.config import ModelConfig
from llm.typing import Array


@struct.dataclass
class KVCache:
    """k_YBKSH / v_YBKSH: per-layer keys and values; lengths_B: valid slots per sequence."""

    k_YBKSH: Array
    v_YBKSH: Array
    lengths_B: Array

    @property
    def max_len(self) -> int:
        return self.k_YBKSH.shape[3]

    @property
    def batch(self) -> int:
        return self.k_YBKSH.shape[1]

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
        """`init_cache`, reachable from the class that `llm.model.cache.init_cache` picks."""
        return init_cache(cfg, batch, max_len, dtype)

    def select_rows(self, rows_R: Array) -> KVCache:
        """The cache of sequences `rows_R` (beam search reorders beams this way)."""
        return KVCache(
            k_YBKSH=jnp.take(self.k_YBKSH, rows_R, axis=1),
            v_YBKSH=jnp.take(self.v_YBKSH, rows_R, axis=1),
            lengths_B=jnp.take(self.lengths_B, rows_R, axis=0),
        )

    def put_rows(self, rows_R: Array, other: KVCache) -> KVCache:
        """Row rows_R[r] replaced by row r of `other`; out-of-range rows dropped. A scatter,
        in place when the caller donates this cache (the engine's slot insert)."""
        if other.max_len != self.max_len:
            raise ValueError(f"{other.max_len=} must equal this cache's {self.max_len=}")

        def put(big, small, axis):
            return big.at[(slice(None),) * axis + (rows_R,)].set(small, mode="drop")

        return KVCache(
            k_YBKSH=put(self.k_YBKSH, other.k_YBKSH, 1),
            v_YBKSH=put(self.v_YBKSH, other.v_YBKSH, 1),
            lengths_B=put(self.lengths_B, other.lengths_B, 0),
        )

    def rollback(self, lengths_B: Array) -> KVCache:
        """Slots at or above the new length are masked from then on and overwritten by the
        next tokens, so forgetting is lowering `lengths_B` (clamped: above the current length
        lie slots never written)."""
        return self.replace(lengths_B=jnp.minimum(lengths_B, self.lengths_B).astype(jnp.int32))


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache for `batch` sequences of up to `max_len` tokens (in `cfg.dtype`)."""
    shape = (cfg.n_layers, batch, cfg.kv_heads, max_len, cfg.head_size)
    dtype = jnp.dtype(dtype or cfg.dtype)
    return KVCache(
        k_YBKSH=jnp.zeros(shape, dtype),
        v_YBKSH=jnp.zeros(shape, dtype),
        lengths_B=jnp.zeros((batch,), jnp.int32),
    )


def cache_bytes(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> int:
    """Memory of `init_cache(cfg, batch, max_len)` in bytes (keys and values)."""
    itemsize = jnp.dtype(dtype or cfg.dtype).itemsize
    return 2 * cfg.n_layers * batch * max_len * cfg.kv_heads * cfg.head_size * itemsize


def logical_axes() -> KVCache:
    """Logical axis names of the cache arrays, for the same rules table as the params."""
    from jax.sharding import PartitionSpec as P

    kv = P("layers", "batch", "kv_heads", "cache_seq", "head_dim")
    return KVCache(k_YBKSH=kv, v_YBKSH=kv, lengths_B=P("batch"))


def step_layout(cache: KVCache, segment_ids_BL: Array) -> tuple[Array, Array, Array]:
    """Positions of the new tokens and the kv positions / segment ids after writing them.

    Returns (positions_BL, kv_positions_BS, kv_segment_ids_BS): the kv ids are 1 for slots
    below the new length and 0 (masked) above, so backends see an ordinary ragged mask.
    """
    B, L = segment_ids_BL.shape
    positions_BL = cache.lengths_B[:, None] + jnp.arange(L, dtype=jnp.int32)
    new_lengths_B = cache.lengths_B + (segment_ids_BL != 0).sum(-1, dtype=jnp.int32)
    slots_S = jnp.arange(cache.max_len, dtype=jnp.int32)
    kv_positions_BS = jnp.broadcast_to(slots_S, (B, cache.max_len))
    kv_segment_ids_BS = (slots_S[None] < new_lengths_B[:, None]).astype(jnp.int32)
    return positions_BL, kv_positions_BS, kv_segment_ids_BS


def advance(cache: KVCache, segment_ids_BL: Array) -> Array:
    """lengths_B after appending the valid (segment id != 0) tokens of a step."""
    return cache.lengths_B + (segment_ids_BL != 0).sum(-1, dtype=jnp.int32)


def write_layer(
    kv_YBKSH: Array, layer: Array, new_BLKH: Array, positions_BL: Array
) -> tuple[Array, Array]:
    """Stores one layer's new keys (or values) at slots positions_BL (slots past the end are
    dropped); returns (the stacked cache, that layer's updated slice).

    Under the layer scan (a traced `layer`) the layer is sliced out, updated and written
    back with a dynamic-update-slice, in place on the scan carry: scattering straight into
    the stacked array was slower on CPU (63 vs 52 ms per decode step of the bench/decode.py
    model, 256 slots). With a static layer (unrolled layers, `scan_layers=False` or the
    engine's per-layer weights) the scatter into the stack is itself in place.
    """
    B = kv_YBKSH.shape[1]
    rows_B1 = jnp.arange(B, dtype=jnp.int32)[:, None]
    new = new_BLKH.astype(kv_YBKSH.dtype)
    if isinstance(layer, int):  # unrolled layers: scatter into the stack, in place
        kv_YBKSH = kv_YBKSH.at[layer, rows_B1, :, positions_BL].set(new, mode="drop")
        return kv_YBKSH, kv_YBKSH[layer]
    kv_BKSH = jax.lax.dynamic_index_in_dim(kv_YBKSH, layer, axis=0, keepdims=False)
    kv_BKSH = kv_BKSH.at[rows_B1, :, positions_BL].set(new, mode="drop")
    return jax.lax.dynamic_update_index_in_dim(kv_YBKSH, kv_BKSH, layer, axis=0), kv_BKSH
