"""The T5-style encoder-decoder (Raffel et al., 2020, arXiv:1910.10683): `model.arch: t5`.

An encoder reads the source with bidirectional self-attention; a decoder reads the target
(already shifted: start token first) with causal self-attention and attends to the
encoder's output through cross-attention in every block. Design choices, T5's:
* No position embeddings: a learned, bucketed relative position bias per head
  (`relative_bias.py`), one table per stack, computed once and added in all its layers.
* RMSNorm without bias (Zhang & Sennrich, 2019, arXiv:1910.07467), pre-norm, and a final
  norm at the end of each stack; bias-free projections; no 1/sqrt(H) in the attention
  logits (folded into the query init, `cross_attention.py`).
* One token embedding shared by encoder, decoder and (tie_embeddings) the output layer;
  tied, the decoder output is scaled by d_model**-0.5 first (T5 v1.0; v1.1 unties the head
  and drops the scale: `tie_embeddings=false`, or `scale_decoder_output=false`).
* MLP: ReLU (v1.0) or gated GELU (v1.1, `activation=geglu_tanh`), `llm.model.mlp.MLP`.
* Dropout (T5 uses one rate): `embed_dropout` on each stack's embeddings, `resid_dropout`
  on every residual branch and after each final norm, `attn_dropout` on the probabilities.
  (T5 also drops inside the MLP; ours has no dropout there.)
* Blocks are stacked along a leading `layers` axis and scanned (compile time independent of
  depth), rematerialised by `model.remat`, as in `transformer.py`.

Segment ids (0 = padding) give the masks: encoder query i sees key j iff same segment and
j is not padding; decoder query i sees decoder key j <= i of its segment and the encoder
keys of the same segment id (so packed pairs stay apart). Relative positions are token
indices: within one contiguous document they equal the positions, whatever the padding.

The pure-functional API (`seq2seq_forward`, `encode`, `seq2seq_generate`) and the decoding
cache live in `seq2seq.py`; `llm.model.forward` refuses this arch.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from llm.config import ModelConfig
from llm.model.attention import split_key
from llm.model.cross_attention import CrossAttention
from llm.model.layers import dropout, make_norm, normal, param
from llm.model.mlp import MLP
from llm.model.relative_bias import relative_bias
from llm.model.transformer import REMAT_POLICIES
from llm.ops.masks import attention_mask, default_positions
from llm.typing import Array


def _out_std(cfg: ModelConfig, branches: int) -> float:
    """Residual out-projection init: std / sqrt(branches) with `scale_residual_init`."""
    return cfg.init_std / math.sqrt(branches) if cfg.scale_residual_init else cfg.init_std


class EncoderBlock(nnx.Module):
    """Bidirectional self-attention then MLP, each pre-norm with a residual connection."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        out_std = _out_std(cfg, 2 * cfg.n_layers)
        self.attn_norm = make_norm(cfg, cfg.d_model, "embed", rngs)
        self.attn = CrossAttention(cfg, out_std=out_std, rngs=rngs)
        self.mlp_norm = make_norm(cfg, cfg.d_model, "embed", rngs)
        self.mlp = MLP(cfg, out_std=out_std, rngs=rngs)

    def __call__(self, x_BSD: Array, mask_BSS: Array, bias_BNSS: Array, key) -> Array:
        k_attn, k_res1, k_res2 = split_key(key, 3)
        rate = self.cfg.resid_dropout
        h_BSD = self.attn_norm(x_BSD)
        attn_BSD = self.attn(h_BSD, *self.attn.kv(h_BSD), mask_BSS, bias_BNSS, k_attn)
        x_BSD = x_BSD + dropout(attn_BSD, rate, k_res1)
        return x_BSD + dropout(self.mlp(self.mlp_norm(x_BSD)).hidden_BLD, rate, k_res2)


class DecoderBlock(nnx.Module):
    """Causal self-attention, cross-attention over the encoder output, then MLP.

    Split in two calls so a decode step can write the new keys to its cache in between:
    `self_inputs` (the normed stream and its keys/values), then `finish`."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        out_std = _out_std(cfg, 3 * cfg.decoder_layers)
        self.self_norm = make_norm(cfg, cfg.d_model, "embed", rngs)
        self.self_attn = CrossAttention(cfg, out_std=out_std, rngs=rngs)
        self.cross_norm = make_norm(cfg, cfg.d_model, "embed", rngs)
        self.cross_attn = CrossAttention(cfg, out_std=out_std, rngs=rngs)
        self.mlp_norm = make_norm(cfg, cfg.d_model, "embed", rngs)
        self.mlp = MLP(cfg, out_std=out_std, rngs=rngs)

    def self_inputs(self, x_BLD: Array) -> tuple[Array, Array, Array]:
        """(normed stream, its keys, its values) for the self-attention."""
        h_BLD = self.self_norm(x_BLD)
        return (h_BLD, *self.self_attn.kv(h_BLD))

    def finish(
        self, x_BLD, h_BLD, self_kv, self_mask_BLS, self_bias_BNLS, cross_kv, cross_mask_BLS, key
    ) -> Array:
        """The block's output given the self-attention keys/values `self_kv` (the layer's
        own, or its cache) and the cross-attention ones `cross_kv` (of the encoder output)."""
        k_self, k_cross, *k_res = split_key(key, 5)
        rate = self.cfg.resid_dropout
        attn_BLD = self.self_attn(h_BLD, *self_kv, self_mask_BLS, self_bias_BNLS, k_self)
        x_BLD = x_BLD + dropout(attn_BLD, rate, k_res[0])
        cross_BLD = self.cross_attn(
            self.cross_norm(x_BLD), *cross_kv, cross_mask_BLS, None, k_cross
        )
        x_BLD = x_BLD + dropout(cross_BLD, rate, k_res[1])
        return x_BLD + dropout(self.mlp(self.mlp_norm(x_BLD)).hidden_BLD, rate, k_res[2])


class EncoderDecoder(nnx.Module):
    """Shared embedding, encoder stack, decoder stack, output layer (see module docstring)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        V, D, N, R, pdt = cfg.vocab_size, cfg.d_model, cfg.n_heads, cfg.rel_buckets, cfg.param_dtype
        self.token_embed = param(rngs, normal(cfg.init_std), (V, D), ("vocab", "embed"), pdt)
        self.encoder_blocks = _stacked(EncoderBlock, cfg, cfg.n_layers, rngs)
        self.encoder_rel_bias = param(rngs, normal(cfg.init_std), (R, N), ("position", "heads"),
                                      pdt)  # fmt: skip
        self.encoder_norm = make_norm(cfg, D, "embed", rngs)
        self.decoder_blocks = _stacked(DecoderBlock, cfg, cfg.decoder_layers, rngs)
        self.decoder_rel_bias = param(rngs, normal(cfg.init_std), (R, N), ("position", "heads"),
                                      pdt)  # fmt: skip
        self.decoder_norm = make_norm(cfg, D, "embed", rngs)
        self.lm_head = (
            None
            if cfg.tie_embeddings
            else param(rngs, normal(cfg.init_std), (D, V), ("embed", "vocab"), pdt)
        )

    def __call__(self, *args, **kwargs):
        raise ValueError(
            "model.arch='t5' is an encoder-decoder: call llm.model.seq2seq_forward(cfg, "
            "params, encoder_tokens_BS, decoder_tokens_BL, ...) (or llm.model.encode / "
            "llm.model.seq2seq_generate), not llm.model.forward"
        )

    @staticmethod
    def init_cache(cfg: ModelConfig, batch: int, max_len: int):
        raise ValueError(
            "model.arch='t5' decodes against its encoder's output: build the cache with "
            "llm.model.seq2seq.start_decoding(cfg, params, encoder_tokens_BS, ...) or call "
            "llm.model.seq2seq_generate"
        )

    def embed(self, tokens_BL: Array, key) -> Array:
        x_BLD = jnp.take(self.token_embed[...], tokens_BL, axis=0).astype(self.cfg.dtype)
        return dropout(x_BLD, self.cfg.embed_dropout, key)

    def encode(self, tokens_BS: Array, segment_ids_BS: Array, key=None) -> Array:
        """The encoder output [B, S, D] (after its final norm)."""
        cfg = self.cfg
        k_embed, k_blocks, k_out = split_key(key, 3)
        positions_BS = default_positions(*tokens_BS.shape)
        mask_BSS = attention_mask(segment_ids_BS, segment_ids_BS, positions_BS, positions_BS,
                                  causal=False)  # fmt: skip
        bias_BNSS = self.position_bias("encoder", positions_BS[:1], positions_BS[:1])

        def body(block, x_BSD, layer_key):
            return block(x_BSD, mask_BSS, bias_BNSS, layer_key)

        x_BSD = _run(self.encoder_blocks, cfg, body, self.embed(tokens_BS, k_embed), k_blocks)
        return dropout(self.encoder_norm(x_BSD), cfg.resid_dropout, k_out)

    def decode(
        self, tokens_BL, encoded_BSD, encoder_segment_ids_BS, segment_ids_BL, key=None
    ) -> Array:
        """The decoder's final hidden state [B, L, D] (after its final norm) for the whole
        (shifted) target, teacher-forced."""
        cfg = self.cfg
        k_embed, k_blocks, k_out = split_key(key, 3)
        positions_BL = default_positions(*tokens_BL.shape)
        self_mask_BLS = attention_mask(segment_ids_BL, segment_ids_BL, positions_BL, positions_BL)
        cross_mask_BLS = attention_mask(
            segment_ids_BL, encoder_segment_ids_BS, positions_BL,
            default_positions(*encoder_segment_ids_BS.shape), causal=False,
        )  # fmt: skip
        bias_BNLS = self.position_bias("decoder", positions_BL[:1], positions_BL[:1])

        def body(block, x_BLD, layer_key):
            h_BLD, k_BLNH, v_BLNH = block.self_inputs(x_BLD)
            cross_kv = block.cross_attn.kv(encoded_BSD)
            return block.finish(x_BLD, h_BLD, (k_BLNH, v_BLNH), self_mask_BLS, bias_BNLS,
                                cross_kv, cross_mask_BLS, layer_key)  # fmt: skip

        x_BLD = _run(self.decoder_blocks, cfg, body, self.embed(tokens_BL, k_embed), k_blocks)
        return dropout(self.decoder_norm(x_BLD), cfg.resid_dropout, k_out)

    def position_bias(self, stack: str, q_positions_BL: Array, kv_positions_BS: Array) -> Array:
        """bias_BNLS of the `stack`'s ("encoder" or "decoder") relative position table: the
        encoder's buckets are bidirectional, the decoder's causal."""
        table = (self.encoder_rel_bias if stack == "encoder" else self.decoder_rel_bias)[...]
        return relative_bias(
            table,
            q_positions_BL,
            kv_positions_BS,
            bidirectional=stack == "encoder",
            max_distance=self.cfg.rel_max_distance,
        )

    def logits(self, x_BLD: Array) -> Array:
        """Output layer on the decoder's final hidden state: the tied embedding (after the
        d_model**-0.5 scale unless `scale_decoder_output=false`) or the separate lm_head."""
        cfg = self.cfg
        x_BLD = x_BLD.astype(cfg.dtype)
        if self.lm_head is not None:
            return jnp.einsum("BLD,DV->BLV", x_BLD, self.lm_head[...].astype(cfg.dtype))
        if cfg.scale_decoder_output:
            x_BLD = x_BLD * (cfg.d_model**-0.5)
        return jnp.einsum("BLD,VD->BLV", x_BLD, self.token_embed[...].astype(cfg.dtype))


def _run(blocks: nnx.Module, cfg: ModelConfig, body, x, key):
    """`body(block, x, layer_key) -> x` over stacked `blocks`: a `lax.scan`, or a Python
    loop with `scan_layers=false`; each layer rematerialised by `cfg.remat`."""
    graphdef, stacked = nnx.split(blocks)
    n = jax.tree.leaves(stacked)[0].shape[0]
    keys = None if key is None else jax.random.split(key, n)

    def step(x, layer):
        layer_state, index = layer
        layer_key = None if keys is None else keys[index]
        return body(nnx.merge(graphdef, layer_state), x, layer_key), None

    if cfg.remat != "none":
        step = jax.checkpoint(step, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
    if cfg.scan_layers:
        return jax.lax.scan(step, x, (stacked, jnp.arange(n)))[0]
    for i in range(n):
        x = step(x, (jax.tree.map(lambda a, i=i: a[i], stacked), i))[0]
    return x


def _stacked(cls, cfg: ModelConfig, n: int, rngs: nnx.Rngs) -> nnx.Module:
    """`n` blocks of `cls` whose params carry a leading `layers` axis (for the scan)."""

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs: nnx.Rngs) -> nnx.Module:
        return cls(cfg, rngs)

    return make(rngs)
