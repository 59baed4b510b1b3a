"""The decoder-only Transformer: one config-driven definition for every variant we teach.

Design choices, each a config switch (see `ModelConfig`):
* Positions: learned absolute (GPT-2), sinusoidal (Vaswani et al., 2017), RoPE
  (Su et al., 2021) with linear / Llama-3.1 scaling, ALiBi (Press et al., 2022), or none
  (NoPE; Kazemnejad et al., 2023, arXiv:2305.19466: causal masking alone leaks position).
* Norms: LayerNorm or RMSNorm, pre-norm (Xiong et al., 2020, arXiv:2002.04745: stable
  without warmup) or post-norm (the original Transformer; no final norm then).
* Attention: MHA/GQA/MQA by the KV-head count, segment-id masks for packed sequences,
  sliding window (Beltagy et al., 2020; Mistral), QK-norm, logit soft-capping.
* Residual-branch output projections initialised with std / sqrt(2 * n_layers)
  (GPT-2, Radford et al., 2019) so the residual stream's variance does not grow with depth.
* Layers are stacked along a leading `layers` axis and run with `jax.lax.scan`, so compile
  time is independent of depth; each block can be rematerialised (Chen et al., 2016,
  arXiv:1604.06174) with a policy from config. `scan_layers: false` unrolls the same
  stacked params into a Python loop: compile time grows with depth, but XLA no longer
  stacks each layer's saved activations, which made small CPU train steps ~20% faster.
* Every layer returns a `LayerOutput` (`outputs.py`): hidden state, updated cache, and named
  auxiliary losses, which the layer loop sums over layers into `ModelOutput.aux_losses`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from llm.config import ModelConfig
from llm.model import kv_cache, positions
from llm.model.attention import Attention, LayerCache, split_key
from llm.model.layers import dropout, make_norm, normal, param
from llm.model.mlp import MLP
from llm.model.outputs import LayerOutput, ModelOutput, merge_aux, sum_layers
from llm.ops.masks import default_positions
from llm.sharding.constraints import constrain
from llm.typing import Array

REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nnx.Module):
    """Attention then MLP, each a residual branch with a norm before (pre) or after (post)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        out_std = cfg.init_std
        if cfg.scale_residual_init:
            out_std /= math.sqrt(2 * cfg.n_layers)
        self.attn_norm = make_norm(cfg, cfg.d_model, "embed", rngs)
        self.attn = Attention(cfg, out_std=out_std, rngs=rngs)
        self.mlp_norm = make_norm(cfg, cfg.d_model, "embed", rngs)
        self.mlp = MLP(cfg, out_std=out_std, rngs=rngs)

    def __call__(
        self,
        x_BLD,
        positions_BL,
        segment_ids_BL,
        key: Array | None,
        cache: LayerCache | None = None,
    ) -> LayerOutput:
        """The new residual stream, the updated cache (None without one) and the auxiliary
        losses of the attention and MLP."""
        x_BLD = constrain(x_BLD, ("batch", "length", "act_embed"))
        rate = self.cfg.resid_dropout
        k_attn, k_res1, k_res2 = split_key(key, 3)
        pre = self.cfg.norm_placement == "pre"
        attn = self.attn(
            self.attn_norm(x_BLD) if pre else x_BLD, positions_BL, segment_ids_BL, k_attn, cache
        )
        if pre:
            x_BLD = x_BLD + dropout(attn.hidden_BLD, rate, k_res1)
            mlp = self.mlp(self.mlp_norm(x_BLD))
            x_BLD = x_BLD + dropout(mlp.hidden_BLD, rate, k_res2)
        else:
            x_BLD = self.attn_norm(x_BLD + dropout(attn.hidden_BLD, rate, k_res1))
            mlp = self.mlp(x_BLD)
            x_BLD = self.mlp_norm(x_BLD + dropout(mlp.hidden_BLD, rate, k_res2))
        return LayerOutput(x_BLD, attn.cache, merge_aux(attn.aux_losses, mlp.aux_losses))


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        V, D, pdt = cfg.vocab_size, cfg.d_model, cfg.param_dtype
        self.token_embed = param(rngs, normal(cfg.init_std), (V, D), ("vocab", "embed"), pdt)
        pos_shape, pos_axes = (cfg.max_seq_len, D), ("position", "embed")
        self.pos_embed = (
            param(rngs, normal(cfg.init_std), pos_shape, pos_axes, pdt)
            if cfg.pos_encoding == "learned"
            else None
        )
        self.blocks = _stacked_blocks(cfg, rngs)
        self.final_norm = make_norm(cfg, D, "embed", rngs) if cfg.norm_placement == "pre" else None
        self.lm_head = (
            None
            if cfg.tie_embeddings
            else param(rngs, normal(cfg.init_std), (D, V), ("embed", "vocab"), pdt)
        )

    def __call__(
        self,
        tokens_BL: Array,
        positions_BL: Array | None = None,
        segment_ids_BL: Array | None = None,
        dropout_key: Array | None = None,
        return_logits: bool = True,
        return_hidden_states: bool = False,
        input_embeddings_BLD: Array | None = None,
        cache: kv_cache.KVCache | None = None,
        layers: tuple | None = None,
    ) -> ModelOutput:
        """`input_embeddings_BLD`, if given, replaces the token lookup (soft prompts, probes).

        `layers`, if given, are the blocks' params one tree per layer (the decode layout of
        `llm.model.unstack_layers`), used instead of the stacked ones.

        With a `cache`, the tokens continue each cached sequence (right-padded, segment id 0
        marks padding; positions follow from the cache lengths) and the output carries the
        updated cache. See `llm/model/kv_cache.py`.
        """
        cfg = self.cfg
        B, L = tokens_BL.shape
        if segment_ids_BL is None:
            segment_ids_BL = jnp.ones((B, L), jnp.int32)
        if cache is not None:
            return self._cached(tokens_BL, segment_ids_BL, cache, return_logits, layers)
        if positions_BL is None:
            positions_BL = default_positions(B, L)
        k_embed, k_blocks = split_key(dropout_key, 2)
        x_BLD = self.embed(tokens_BL, positions_BL, input_embeddings_BLD)
        x0_BLD = dropout(x_BLD, cfg.embed_dropout, k_embed)
        x_BLD, (per_layer_YBLD, aux_Y) = self._run_blocks(
            x0_BLD, positions_BL, segment_ids_BL, k_blocks, collect=return_hidden_states,
            layers=layers,
        )  # fmt: skip
        hidden_states = None
        if return_hidden_states:
            hidden_states = jnp.concatenate([x0_BLD[None], per_layer_YBLD])
        if self.final_norm is not None:
            x_BLD = self.final_norm(x_BLD)
        logits = self.logits(x_BLD) if return_logits else None
        if logits is not None:
            logits = constrain(logits, ("batch", "length", "vocab"))
        return ModelOutput(
            logits_BLV=logits,
            hidden_BLD=x_BLD,
            hidden_states=hidden_states,
            aux_losses=sum_layers(aux_Y),
        )

    def _cached(
        self, tokens_BL, segment_ids_BL, cache, return_logits: bool, layers=None
    ) -> ModelOutput:
        """Forward of new tokens against a KV cache (deterministic: no dropout)."""
        positions_BL, kv_positions_BS, kv_segment_ids_BS = kv_cache.step_layout(
            cache, segment_ids_BL
        )
        x_BLD = self.embed(tokens_BL, positions_BL)
        graphdef, stacked = nnx.split(self.blocks)

        def body(carry, layer):
            x_BLD, k_YBKSH, v_YBKSH = carry
            layer_state, index = layer
            view = LayerCache(k_YBKSH, v_YBKSH, index, kv_positions_BS, kv_segment_ids_BS)
            out = nnx.merge(graphdef, layer_state)(x_BLD, positions_BL, segment_ids_BL, None, view)
            return (out.hidden_BLD, out.cache.k_YBKSH, out.cache.v_YBKSH), out.aux_losses

        carry = (x_BLD, cache.k_YBKSH, cache.v_YBKSH)
        (x_BLD, k_YBKSH, v_YBKSH), aux_Y = self._over_layers(body, carry, stacked, layers)
        if self.final_norm is not None:
            x_BLD = self.final_norm(x_BLD)
        new_cache = kv_cache.KVCache(k_YBKSH, v_YBKSH, kv_cache.advance(cache, segment_ids_BL))
        logits = self.logits(x_BLD) if return_logits else None
        return ModelOutput(logits, x_BLD, aux_losses=sum_layers(aux_Y), cache=new_cache)

    def embed(self, tokens_BL: Array, positions_BL: Array, x_BLD: Array | None = None) -> Array:
        """Token embeddings (or the given ones) plus absolute position information."""
        cfg = self.cfg
        if x_BLD is None:
            x_BLD = jnp.take(self.token_embed[...], tokens_BL, axis=0)
        x_BLD = x_BLD.astype(cfg.dtype)
        if self.pos_embed is not None:
            x_BLD += jnp.take(self.pos_embed[...], positions_BL, axis=0).astype(cfg.dtype)
        elif cfg.pos_encoding == "sinusoidal":
            x_BLD += positions.sinusoidal(positions_BL, cfg.d_model).astype(cfg.dtype)
        return x_BLD

    def logits(self, x_BLD: Array) -> Array:
        """Output layer: the tied embedding (transposed) or the separate lm_head."""
        dtype = self.cfg.dtype
        if self.lm_head is None:
            return jnp.einsum(
                "BLD,VD->BLV", x_BLD.astype(dtype), self.token_embed[...].astype(dtype)
            )
        return jnp.einsum("BLD,DV->BLV", x_BLD.astype(dtype), self.lm_head[...].astype(dtype))

    def _run_blocks(self, x_BLD, positions_BL, segment_ids_BL, key, *, collect: bool, layers):
        """Scans the stacked blocks (or loops over `layers`, the per-layer params, or over
        slices of the stacked ones); returns the output and, per layer, the block's output
        (if `collect`, else None) and auxiliary losses."""
        graphdef, stacked = nnx.split(self.blocks)
        keys_Y = None if key is None else jax.random.split(key, self.cfg.n_layers)

        def body(x_BLD, layer):
            layer_state, index = layer
            layer_key = None if keys_Y is None else keys_Y[index]
            out = nnx.merge(graphdef, layer_state)(x_BLD, positions_BL, segment_ids_BL, layer_key)
            return out.hidden_BLD, (out.hidden_BLD if collect else None, out.aux_losses)

        if self.cfg.remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[self.cfg.remat], prevent_cse=False)
        return self._over_layers(body, x_BLD, stacked, layers)

    def _over_layers(self, body, carry, stacked, layers):
        """`body(carry, (layer params, layer index))` over the layers: a `lax.scan` over the
        stacked params, or, with `scan_layers=False` or per-layer `layers` given, a Python
        loop (the index is then a Python int, so indexing with it is static). Returns the
        final carry and the per-layer outputs stacked along a leading layers axis (a pytree,
        None leaves staying None): auxiliary losses come back this way, not in the carry,
        because the carry's structure must be known before the first layer has run."""
        n = self.cfg.n_layers
        if layers is None and self.cfg.scan_layers:
            return jax.lax.scan(body, carry, (stacked, jnp.arange(n, dtype=jnp.int32)))
        outs = []
        for i, layer_state in enumerate(layers or _slices(stacked, n)):
            carry, out = body(carry, (layer_state, i))
            outs.append(out)
        return carry, jax.tree.map(lambda *per_layer: jnp.stack(per_layer), *outs)


def _slices(stacked, n_layers: int) -> list:
    """The per-layer trees of stacked block params."""
    return [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n_layers)]


def _stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> Block:
    """n_layers Blocks whose params carry a leading `layers` axis (for the scan)."""

    @nnx.split_rngs(splits=cfg.n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs: nnx.Rngs) -> Block:
        return Block(cfg, rngs)

    return make(rngs)
