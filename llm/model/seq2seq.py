"""The encoder-decoder's pure-functional API and its decoding cache (`model.arch: t5`).

    seq2seq_forward(cfg, params, encoder_tokens_BS, decoder_tokens_BL)  teacher-forced logits
    encode(cfg, params, encoder_tokens_BS)                              encoder output
    start_decoding(cfg, params, encoder_tokens_BS, ..., max_len)        an `EncDecCache`
    decode_step(cfg, params, tokens_BT, cache)                          logits, updated cache
    seq2seq_generate(cfg, params, encoder_tokens_BS, ...)               greedy tokens

Decoding keeps two caches per decoder layer (as T5 implementations do): the cross-attention
keys and values of the encoder output, projected once by `start_decoding` and only read
afterwards, and the self-attention keys and values, which grow by the tokens of each step
(slot s holds the token at position s). A step therefore costs one token's projections and
attention over the cache, never a pass over the source. `EncDecCache` implements the
`llm.model.cache.Cache` protocol (lengths, row selection and insertion, rollback), so beam
search or an engine can hold it like the decoder-only KVCache.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct

from llm.config import ModelConfig
from llm.model.encdec import EncoderDecoder
from llm.model.functional import _abstract
from llm.model.outputs import ModelOutput
from llm.typing import Array, PyTree


@struct.dataclass
class EncDecCache:
    """self_k/v_YBSNH: the decoder's own keys/values, slot s = position s, valid below
    lengths_B; cross_k/v_YBSNH: each layer's projection of the encoder output, fixed;
    encoder_segment_ids_BS: 0 marks source padding (never attended)."""

    self_k_YBSNH: Array
    self_v_YBSNH: Array
    cross_k_YBSNH: Array
    cross_v_YBSNH: Array
    encoder_segment_ids_BS: Array
    lengths_B: Array

    @property
    def max_len(self) -> int:
        return self.self_k_YBSNH.shape[2]

    def select_rows(self, rows_R: Array) -> EncDecCache:
        """The cache of rows `rows_R`, in that order (beam search reorders beams this way)."""
        take = functools.partial(jnp.take, indices=rows_R)
        return jax.tree.map(lambda a: take(a, axis=0 if a.ndim < 3 else 1), self)

    def put_rows(self, rows_R: Array, other: EncDecCache) -> EncDecCache:
        """Row rows_R[r] replaced by row r of `other`; out-of-range indices dropped."""
        mine, theirs = self.cross_k_YBSNH.shape, other.cross_k_YBSNH.shape
        if other.max_len != self.max_len or mine[2] != theirs[2]:
            raise ValueError(
                f"put_rows: caches differ: max_len {other.max_len} vs {self.max_len}, "
                f"source length {theirs[2]} vs {mine[2]}"
            )

        def put(big, small):
            index = (rows_R,) if big.ndim < 3 else (slice(None), rows_R)
            return big.at[index].set(small, mode="drop")

        return jax.tree.map(put, self, other)

    def rollback(self, lengths_B: Array) -> EncDecCache:
        """Each row cut back to min(lengths_B, current length) decoder tokens."""
        return self.replace(lengths_B=jnp.minimum(self.lengths_B, lengths_B.astype(jnp.int32)))


def _model(cfg: ModelConfig, params: PyTree) -> EncoderDecoder:
    if cfg.arch != "t5":
        raise ValueError(f"the seq2seq API runs model.arch='t5'; got arch {cfg.arch!r}")
    return nnx.merge(_abstract(cfg)[0], params)


def _ones(tokens: Array, segment_ids: Array | None) -> Array:
    return jnp.ones(tokens.shape, jnp.int32) if segment_ids is None else segment_ids


def encode(
    cfg: ModelConfig, params: PyTree, encoder_tokens_BS: Array, encoder_segment_ids_BS=None
) -> Array:
    """The encoder output [B, S, D] (deterministic); segment id 0 marks padding."""
    return _model(cfg, params).encode(
        encoder_tokens_BS, _ones(encoder_tokens_BS, encoder_segment_ids_BS)
    )


def seq2seq_forward(
    cfg: ModelConfig,
    params: PyTree,
    encoder_tokens_BS: Array,
    decoder_tokens_BL: Array,
    *,
    encoder_segment_ids_BS: Array | None = None,
    decoder_segment_ids_BL: Array | None = None,
    dropout_key: Array | None = None,
    return_logits: bool = True,
) -> ModelOutput:
    """Teacher-forced forward: logits_BLV over the decoder positions (`decoder_tokens_BL`
    already shifted, start token first); hidden_BLD is the decoder's final normed state
    (`llm.model.unembed` of it gives the logits). Segment ids: 0 = padding, and decoder
    segment k attends to encoder segment k (packing). `dropout_key=None`: deterministic."""
    model = _model(cfg, params)
    enc_seg_BS = _ones(encoder_tokens_BS, encoder_segment_ids_BS)
    k_enc, k_dec = (None, None) if dropout_key is None else jax.random.split(dropout_key)
    encoded_BSD = model.encode(encoder_tokens_BS, enc_seg_BS, k_enc)
    hidden_BLD = model.decode(decoder_tokens_BL, encoded_BSD, enc_seg_BS,
                              _ones(decoder_tokens_BL, decoder_segment_ids_BL), k_dec)  # fmt: skip
    logits_BLV = model.logits(hidden_BLD) if return_logits else None
    return ModelOutput(logits_BLV=logits_BLV, hidden_BLD=hidden_BLD)


def start_decoding(
    cfg: ModelConfig,
    params: PyTree,
    encoder_tokens_BS: Array,
    encoder_segment_ids_BS: Array | None = None,
    *,
    max_len: int,
) -> EncDecCache:
    """Encodes the source and projects it into every decoder layer's cross-attention keys
    and values; room for `max_len` decoder tokens per row. Each row is one source: all its
    non-padding tokens are visible to the decoder."""
    cfg_dtype = jnp.dtype(cfg.dtype)
    model = _model(cfg, params)
    enc_seg_BS = _ones(encoder_tokens_BS, encoder_segment_ids_BS)
    encoded_BSD = model.encode(encoder_tokens_BS, enc_seg_BS)
    graphdef, stacked = nnx.split(model.decoder_blocks)

    def cross(layer_state):
        return nnx.merge(graphdef, layer_state).cross_attn.kv(encoded_BSD)

    cross_k, cross_v = jax.lax.map(cross, stacked)
    B, Y = encoder_tokens_BS.shape[0], cfg.decoder_layers
    empty = jnp.zeros((Y, B, max_len, cfg.n_heads, cfg.head_size), cfg_dtype)
    return EncDecCache(empty, empty, cross_k, cross_v, enc_seg_BS, jnp.zeros((B,), jnp.int32))


def decode_step(
    cfg: ModelConfig, params: PyTree, tokens_BT: Array, cache: EncDecCache
) -> tuple[Array, EncDecCache]:
    """Logits [B, T, V] of T new decoder tokens per row (positions lengths_B + t) and the
    cache holding them; equals the teacher-forced forward's logits at those positions.

    Tokens at positions >= cache.max_len are not stored (the scatter drops them, and under
    jit the lengths cannot be checked): the caller keeps lengths_B + T <= max_len by giving
    `start_decoding` a max_len of at least the longest decoder sequence."""
    model = _model(cfg, params)
    B, T = tokens_BT.shape
    positions_BT = cache.lengths_B[:, None] + jnp.arange(T, dtype=jnp.int32)
    slots_BS = jnp.broadcast_to(jnp.arange(cache.max_len, dtype=jnp.int32), (B, cache.max_len))
    self_mask_BTS = slots_BS[:, None, :] <= positions_BT[:, :, None]
    cross_mask_BTS = jnp.broadcast_to(
        (cache.encoder_segment_ids_BS != 0)[:, None, :], (B, T, cache.cross_k_YBSNH.shape[2])
    )
    bias_BNTS = model.position_bias("decoder", positions_BT, slots_BS)
    graphdef, stacked = nnx.split(model.decoder_blocks)
    rows_B1 = jnp.arange(B)[:, None]

    def body(x_BTD, layer):
        layer_state, k_BSNH, v_BSNH, cross_k, cross_v = layer
        block = nnx.merge(graphdef, layer_state)
        h_BTD, k_new, v_new = block.self_inputs(x_BTD)
        k_BSNH = k_BSNH.at[rows_B1, positions_BT].set(k_new.astype(k_BSNH.dtype), mode="drop")
        v_BSNH = v_BSNH.at[rows_B1, positions_BT].set(v_new.astype(v_BSNH.dtype), mode="drop")
        x_BTD = block.finish(x_BTD, h_BTD, (k_BSNH, v_BSNH), self_mask_BTS, bias_BNTS,
                             (cross_k, cross_v), cross_mask_BTS, None)  # fmt: skip
        return x_BTD, (k_BSNH, v_BSNH)

    xs = (stacked, cache.self_k_YBSNH, cache.self_v_YBSNH, cache.cross_k_YBSNH,
          cache.cross_v_YBSNH)  # fmt: skip
    x_BTD, (self_k, self_v) = jax.lax.scan(body, model.embed(tokens_BT, None), xs)
    logits_BTV = model.logits(model.decoder_norm(x_BTD))
    cache = cache.replace(self_k_YBSNH=self_k, self_v_YBSNH=self_v,
                          lengths_B=cache.lengths_B + T)  # fmt: skip
    return logits_BTV, cache


def seq2seq_generate(
    cfg: ModelConfig,
    params: PyTree,
    encoder_tokens_BS: Array,
    encoder_segment_ids_BS: Array | None,
    *,
    max_new_tokens: int,
    start_id: int,
    eos_id: int | None,
) -> Array:
    """Greedy decoding: int32 [B, max_new_tokens], the positions after a row's EOS filled
    with `eos_id`. One encoder pass, then one cached step per token."""
    cache = start_decoding(cfg, params, encoder_tokens_BS, encoder_segment_ids_BS,
                           max_len=max_new_tokens)  # fmt: skip
    B = encoder_tokens_BS.shape[0]

    def step(carry, _):
        cache, token_B, done_B = carry
        logits_B1V, cache = decode_step(cfg, params, token_B[:, None], cache)
        next_B = jnp.argmax(logits_B1V[:, 0], axis=-1).astype(jnp.int32)
        if eos_id is not None:
            next_B = jnp.where(done_B, eos_id, next_B)
            done_B = done_B | (next_B == eos_id)
        return (cache, next_B, done_B), next_B

    start = (cache, jnp.full((B,), start_id, jnp.int32), jnp.zeros((B,), bool))
    _, tokens_TB = jax.lax.scan(step, start, None, length=max_new_tokens)
    return tokens_TB.T
