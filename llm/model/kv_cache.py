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

int8 storage (`model.kv_cache_dtype=int8`): each cached key or value vector (one layer,
row, kv head and position) is kept as int8 codes and one float32 scale, symmetric absmax
over head_dim: scale = max|x| / 127, code = round(x / scale). That is the token-wise int8
of ZeroQuant (Yao et al., 2022, arXiv:2206.01861) applied to keys and values; each element
is off by at most scale / 2 = max|x| / 254. Per token rather than per channel (KIVI, Liu et
al., 2024, arXiv:2402.02750, quantizes keys per channel) so a new token is written without
touching the others. A token costs 2 Y K (H + 4) bytes instead of 2 Y K H * 4 (float32):
3.8x less at H = 64. Tokens are quantized as they are written (`write_layer`) and attention
reads the layer's slice dequantized (`dequantize`): codes * scale, one rounding, in the
activation dtype. It saves memory (longer contexts, more rows), not time: XLA:CPU writes the
dequantized slice before the attention dots read it.

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
class Int8KV:
    """Keys or values as int8 codes [..., S, H] and float32 scales [..., S]: each vector is
    codes * scales[..., None]. Stands in for a float [..., S, H] array in a `KVCache`."""

    codes: Array
    scales: Array

    @property
    def shape(self) -> tuple[int, ...]:
        return self.codes.shape


KV = Array | Int8KV  # what one of a KVCache's k / v holds


@struct.dataclass
class KVCache:
    """k_YBKSH / v_YBKSH: per-layer keys and values (float arrays, or `Int8KV`);
    lengths_B: valid slots per sequence."""

    k_YBKSH: KV
    v_YBKSH: KV
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

        def take(kv):
            return jax.tree.map(lambda a: jnp.take(a, rows_R, axis=1), kv)

        return KVCache(
            k_YBKSH=take(self.k_YBKSH),
            v_YBKSH=take(self.v_YBKSH),
            lengths_B=jnp.take(self.lengths_B, rows_R, axis=0),
        )

    def put_rows(self, rows_R: Array, other: KVCache) -> KVCache:
        """Row rows_R[r] replaced by row r of `other`; out-of-range rows dropped. A scatter,
        in place when the caller donates this cache (the engine's slot insert)."""
        if other.max_len != self.max_len:
            raise ValueError(f"{other.max_len=} must equal this cache's {self.max_len=}")
        if isinstance(other.k_YBKSH, Int8KV) != isinstance(self.k_YBKSH, Int8KV):
            raise ValueError("put_rows: one cache is int8 and the other float; build both "
                             "with the same model.kv_cache_dtype")  # fmt: skip

        def put(big, small, axis):
            return big.at[(slice(None),) * axis + (rows_R,)].set(small, mode="drop")

        def put_kv(big, small):
            return jax.tree.map(lambda b, s: put(b, s, 1), big, small)

        return KVCache(
            k_YBKSH=put_kv(self.k_YBKSH, other.k_YBKSH),
            v_YBKSH=put_kv(self.v_YBKSH, other.v_YBKSH),
            lengths_B=put(self.lengths_B, other.lengths_B, 0),
        )

    def rollback(self, lengths_B: Array) -> KVCache:
        """Slots at or above the new length are masked from then on and overwritten by the
        next tokens, so forgetting is lowering `lengths_B` (clamped: above the current length
        lie slots never written)."""
        return self.replace(lengths_B=jnp.minimum(lengths_B, self.lengths_B).astype(jnp.int32))


def storage(cfg: ModelConfig, dtype=None) -> str:
    """What the cache stores: "int8", or a float dtype name (`dtype` overrides the config's
    `kv_cache_dtype`; "auto" is the activation dtype `cfg.dtype`)."""
    choice = dtype or cfg.kv_cache_dtype
    return cfg.dtype if choice == "auto" else jnp.dtype(choice).name


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache for `batch` sequences of up to `max_len` tokens, stored as
    `storage(cfg, dtype)` ("int8": `Int8KV` codes and scales)."""
    shape = (cfg.n_layers, batch, cfg.kv_heads, max_len, cfg.head_size)
    kind = storage(cfg, dtype)

    def empty() -> KV:
        if kind == "int8":
            return Int8KV(jnp.zeros(shape, jnp.int8), jnp.ones(shape[:-1], jnp.float32))
        return jnp.zeros(shape, kind)

    return KVCache(k_YBKSH=empty(), v_YBKSH=empty(), lengths_B=jnp.zeros((batch,), jnp.int32))


def cache_bytes(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> int:
    """Memory of `init_cache(cfg, batch, max_len, dtype)` in bytes (keys and values)."""
    kind = storage(cfg, dtype)
    per_vector = cfg.head_size + 4 if kind == "int8" else cfg.head_size * jnp.dtype(kind).itemsize
    return 2 * cfg.n_layers * batch * max_len * cfg.kv_heads * per_vector


def logical_axes(cfg: ModelConfig | None = None) -> KVCache:
    """Logical axis names of the cache arrays, for the same rules table as the params (of
    `init_cache(cfg, ...)`; without `cfg`, a float cache)."""
    from jax.sharding import PartitionSpec as P

    kv = P("layers", "batch", "kv_heads", "cache_seq", "head_dim")
    if cfg is not None and storage(cfg) == "int8":
        kv = Int8KV(kv, P("layers", "batch", "kv_heads", "cache_seq"))
    return KVCache(k_YBKSH=kv, v_YBKSH=kv, lengths_B=P("batch"))


def quantize(x_BLKH: Array) -> Int8KV:
    """int8 codes and float32 scales of vectors along the last axis: scale = absmax / 127
    (1 for an all-zero vector, whose codes are 0), code = round(x / scale), |code| <= 127."""
    x = x_BLKH.astype(jnp.float32)
    absmax = jnp.max(jnp.abs(x), axis=-1)
    scales = jnp.where(absmax > 0, absmax / 127.0, 1.0)
    codes = jnp.clip(jnp.round(x / scales[..., None]), -127, 127).astype(jnp.int8)
    return Int8KV(codes, scales)


def dequantize(kv: KV, dtype) -> Array:
    """The values `kv` holds, in `dtype` (a float array is returned as it is)."""
    if not isinstance(kv, Int8KV):
        return kv
    # multiplied in float32, rounded to `dtype` once
    return (kv.codes.astype(jnp.float32) * kv.scales[..., None].astype(jnp.float32)).astype(dtype)


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


def fill_prefix(kv_YBKSH: KV, prefix_YPKH: Array) -> KV:
    """`kv_YBKSH` with slots 0..P-1 of every row and layer holding `prefix_YPKH` (prefix
    tuning's keys or values, `llm.model.prime_cache`); an int8 cache quantizes them."""
    P = prefix_YPKH.shape[1]
    p_Y1KPH = jnp.swapaxes(prefix_YPKH, 1, 2)[:, None]
    if not isinstance(kv_YBKSH, Int8KV):
        return kv_YBKSH.at[:, :, :, :P].set(p_Y1KPH.astype(kv_YBKSH.dtype))
    new = quantize(p_Y1KPH)
    return Int8KV(
        kv_YBKSH.codes.at[:, :, :, :P].set(new.codes),
        kv_YBKSH.scales.at[:, :, :, :P].set(new.scales),
    )


def write_layer(kv_YBKSH: KV, layer: Array, new_BLKH: Array, positions_BL: Array) -> tuple[KV, KV]:
    """Stores one layer's new keys (or values) at slots positions_BL (slots past the end are
    dropped); returns (the stacked cache, that layer's updated slice [B, K, S, H]). An int8
    cache quantizes `new_BLKH` on the way in; its slice is an `Int8KV` that attention reads
    through `dequantize`."""
    if not isinstance(kv_YBKSH, Int8KV):
        return _write(kv_YBKSH, layer, new_BLKH.astype(kv_YBKSH.dtype), positions_BL)
    new = quantize(new_BLKH)
    codes, codes_BKSH = _write(kv_YBKSH.codes, layer, new.codes, positions_BL)
    scales, scales_BKS = _write(kv_YBKSH.scales, layer, new.scales, positions_BL)
    return Int8KV(codes, scales), Int8KV(codes_BKSH, scales_BKS)


def _write(c_YBKS_: Array, layer: Array, new_BLK_: Array, positions_BL: Array):
    """`write_layer` of one array (trailing dims `_` after the slot: H, or none for scales).

    Under the layer scan (a traced `layer`) the layer is sliced out, updated and written
    back with a dynamic-update-slice, in place on the scan carry: scattering straight into
    the stacked array was slower on CPU (63 vs 52 ms per decode step of the bench/decode.py
    model, 256 slots). With a static layer (unrolled layers, `scan_layers=False` or the
    engine's per-layer weights) the scatter into the stack is itself in place.
    """
    B = c_YBKS_.shape[1]
    rows_B1 = jnp.arange(B, dtype=jnp.int32)[:, None]
    if isinstance(layer, int):  # unrolled layers: scatter into the stack, in place
        c_YBKS_ = c_YBKS_.at[layer, rows_B1, :, positions_BL].set(new_BLK_, mode="drop")
        return c_YBKS_, c_YBKS_[layer]
    c_BKS_ = jax.lax.dynamic_index_in_dim(c_YBKS_, layer, axis=0, keepdims=False)
    c_BKS_ = c_BKS_.at[rows_B1, :, positions_BL].set(new_BLK_, mode="drop")
    return jax.lax.dynamic_update_index_in_dim(c_YBKS_, c_BKS_, layer, axis=0), c_BKS_
