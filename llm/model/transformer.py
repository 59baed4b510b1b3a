"""The decoder-only Transformer: one config-driven definition for every variant we teach.

Design choices, each a config switch (see `ModelConfig`):
* Positions: learned absolute (GPT-2), sinusoidal (Vaswani et al., 2017), RoPE
  (Su et al., 2021) with linear / Llama-3.1 scaling, ALiBi (Press et al., 2022), or none
  (NoPE; Kazemnejad et al., 2023, arXiv:2305.19466: causal masking alone leaks position),
  or Shaw et al.'s learned relative positions (arXiv:1803.02155, `shaw.py`).
* Norms: LayerNorm or RMSNorm, pre-norm (Xiong et al., 2020, arXiv:2002.04745: stable
  without warmup) or post-norm (the original Transformer; no final norm then); BatchNorm
  for the lesson, with PreciseBN population statistics at evaluation (`batchnorm.py`).
* Attention: MHA/GQA/MQA by the KV-head count, segment-id masks for packed sequences,
  sliding window (Beltagy et al., 2020; Mistral), QK-norm, logit soft-capping, strided /
  block-local sparse patterns (Child et al., 2019, arXiv:1904.10509), prefix-LM masking
  (`prefix_lm.py`).
* Encoders (BERT, Devlin et al., 2019, arXiv:1810.04805): `causal=false` attends both
  ways; token-type embeddings and a LayerNorm on the embeddings (`embed_norm`); with
  post-norm, learned positions and biases this is BERT's layer order (`pooling.py`).
* Residual-branch output projections initialised with std / sqrt(2 * n_layers)
  (GPT-2, Radford et al., 2019) so the residual stream's variance does not grow with depth.
* Layers are stacked along a leading `layers` axis and run with `jax.lax.scan`, so compile
  time is independent of depth; each block can be rematerialised (Chen et al., 2016,
  arXiv:1604.06174) with a policy from config. `scan_layers: false` unrolls the same
  stacked params into a Python loop: compile time grows with depth, but XLA no longer
  stacks each layer's saved activations, which made small CPU train steps ~20% faster.
* Every layer returns a `LayerOutput` (`outputs.py`): hidden state, updated cache, and named
  auxiliary losses, which the layer loop sums over layers into `ModelOutput.aux_losses`.
* PEFT methods that are not weights (`extras.py`): prompt tuning (Lester et al., 2021,
  arXiv:2104.08691) prepends virtual tokens here and cuts them off the output; prefix tuning
  (Li & Liang, 2021, arXiv:2101.00190) hands each layer's attention its prefix; bottleneck
  adapters (Houlsby et al., 2019, arXiv:1902.00751) follow the attention and MLP sub-layers.
  Their per-layer arrays ride the layer scan beside the stacked block params.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from llm.config import ModelConfig
from llm.model import kv_cache, positions
from llm.model.attention import Attention, LayerCache, split_key
from llm.model.batchnorm import apply_norm
from llm.model.extras import SHARED, Extras, LayerExtras, bottleneck
from llm.model.layers import dropout, make_norm, normal, param
from llm.model.mlp import MLP
from llm.model.moe import MoE
from llm.model.outputs import LayerOutput, ModelOutput, merge_aux, sum_layers
from llm.model.prefix_lm import check_prefix
from llm.ops import quantized
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
        mlp_class = MoE if cfg.n_experts else MLP  # mixture of experts: llm/model/moe.py
        self.mlp = mlp_class(cfg, out_std=out_std, rngs=rngs)

    def __call__(
        self,
        x_BLD,
        positions_BL,
        segment_ids_BL,
        key: Array | None,
        cache: LayerCache | None = None,
        extras: LayerExtras | None = None,
        return_attention: bool = False,
        prefix_BL: Array | None = None,
    ) -> LayerOutput:
        """The new residual stream, the updated cache (None without one) and the auxiliary
        losses of the attention and MLP. `extras`: this layer's prefix and adapters.
        `return_attention`: also the attention probabilities (`LayerOutput.attention_BNLS`).
        `prefix_BL`: prefix-LM's bidirectional tokens (see `Attention`)."""
        x_BLD = constrain(x_BLD, ("batch", "length", "act_embed"))
        rate = self.cfg.resid_dropout
        k_attn, k_res1, k_res2 = split_key(key, 3)
        pre = self.cfg.norm_placement == "pre"
        attn_norm, mlp_norm = (  # BatchNorm also reads the padding and the mode (key: training)
            lambda x, n=n: apply_norm(n, x, segment_ids_BL, key is not None)
            for n in (self.attn_norm, self.mlp_norm)
        )
        attn = self.attn(
            attn_norm(x_BLD) if pre else x_BLD, positions_BL, segment_ids_BL, k_attn, cache,
            extras, return_probs=return_attention, prefix_BL=prefix_BL,
        )  # fmt: skip
        attn_h = _adapt(attn.hidden_BLD, extras, "attn")
        mlp_args = (segment_ids_BL,) if self.cfg.n_experts else ()  # MoE: padding routes nowhere
        if pre:
            x_BLD = self._add(x_BLD, dropout(attn_h, rate, k_res1))
            mlp = self.mlp(mlp_norm(x_BLD), *mlp_args)
            x_BLD = self._add(x_BLD, dropout(_adapt(mlp.hidden_BLD, extras, "mlp"), rate, k_res2))
        else:
            x_BLD = attn_norm(self._add(x_BLD, dropout(attn_h, rate, k_res1)))
            mlp = self.mlp(x_BLD, *mlp_args)
            mlp_h = _adapt(mlp.hidden_BLD, extras, "mlp")
            x_BLD = mlp_norm(self._add(x_BLD, dropout(mlp_h, rate, k_res2)))
        return LayerOutput(
            x_BLD, attn.cache, merge_aux(attn.aux_losses, mlp.aux_losses), attn.attention_BNLS
        )

    def _add(self, x_BLD: Array, branch_BLD: Array) -> Array:
        """The residual connection, or (`model.residual=false`) the branch alone."""
        return x_BLD + branch_BLD if self.cfg.residual else branch_BLD


def _adapt(h_BLD: Array, extras: LayerExtras | None, site: str) -> Array:
    """A sub-layer's output through its bottleneck adapter, if this run has one there."""
    if extras is None or not extras.adapters or site not in extras.adapters:
        return h_BLD
    return bottleneck(h_BLD, extras.adapters[site])


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
        types = cfg.type_vocab_size  # BERT's segment A/B embeddings (Devlin et al., 2019)
        self.type_embed = (
            param(rngs, normal(cfg.init_std), (types, D), ("position", "embed"), pdt)
            if types
            else None
        )
        self.embed_norm = make_norm(cfg, D, "embed", rngs) if cfg.embed_norm else None
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
        extras: Extras | None = None,
        return_attention: bool = False,
        token_types_BL: Array | None = None,
        prefix_BL: Array | None = None,
    ) -> ModelOutput:
        """`input_embeddings_BLD`, if given, replaces the token lookup (soft prompts, probes).

        `prefix_BL` (required exactly when `model.prefix_lm`): True on the prefix tokens of
        each document, seen bidirectionally (llm/model/prefix_lm.py); with a cache, the new
        tokens' flags (the prompt's, when priming it; all False for decoded tokens).

        `token_types_BL`: BERT's segment (A/B) ids into the `type_vocab_size` table (zeros
        when None); only for a model with one and without a cache.

        `return_attention`: every layer's attention probabilities in `out.attention_YBNLS`,
        computed by the reference backend whatever `attention_impl` is (the output then
        comes from those probabilities too). Not with a cache or prompt / prefix tuning.

        `extras` (llm/model/extras.py) adds prompt / prefix tuning and bottleneck adapters;
        the output then still covers exactly the L real tokens.

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
        extras = extras or Extras()
        if return_attention and (cache is not None or extras.n_virtual):
            raise ValueError(
                "return_attention reads a full forward's probabilities: not with a KV cache "
                "or with prompt / prefix tuning's virtual tokens"
            )
        if cache is not None and token_types_BL is not None:
            raise ValueError("token_types_BL: a KV-cache step reads token type 0 only")
        check_prefix(cfg, prefix_BL, (B, L))
        if cache is not None:
            return self._cached(
                tokens_BL, segment_ids_BL, cache, return_logits, layers, extras,
                input_embeddings_BLD, prefix_BL=prefix_BL,
            )  # fmt: skip
        if positions_BL is None:
            positions_BL = default_positions(B, L)
        positions_BL = positions_BL + self._check_virtual(L, extras)  # real tokens at P + p
        k_embed, k_blocks = split_key(dropout_key, 2)
        x_BLD = self.embed(tokens_BL, positions_BL, input_embeddings_BLD, token_types_BL)
        x_BLD, positions_BL, segment_ids_BL = self._prepend(
            extras.prompt_PD, x_BLD, positions_BL, segment_ids_BL
        )
        x0_BLD = dropout(x_BLD, cfg.embed_dropout, k_embed)
        x_BLD, (per_layer_YBLD, aux_Y, attention_YBNLS) = self._run_blocks(
            x0_BLD, positions_BL, segment_ids_BL, k_blocks, collect=return_hidden_states,
            attention=return_attention, layers=layers, extras=extras, prefix_BL=prefix_BL,
        )  # fmt: skip
        if extras.prompt_PD is not None:  # the loss sees the real tokens only
            x_BLD, x0_BLD = x_BLD[:, -L:], x0_BLD[:, -L:]
            per_layer_YBLD = None if per_layer_YBLD is None else per_layer_YBLD[:, :, -L:]
        hidden_states = None
        if return_hidden_states:
            hidden_states = jnp.concatenate([x0_BLD[None], per_layer_YBLD])
        if self.final_norm is not None:
            x_BLD = apply_norm(
                self.final_norm, x_BLD, segment_ids_BL[:, -L:], dropout_key is not None
            )
        logits = self.logits(x_BLD) if return_logits else None
        if logits is not None:
            logits = constrain(logits, ("batch", "length", "vocab"))
        return ModelOutput(
            logits_BLV=logits,
            hidden_BLD=x_BLD,
            hidden_states=hidden_states,
            aux_losses=sum_layers(aux_Y),
            attention_YBNLS=attention_YBNLS,
        )

    def _cached(
        self,
        tokens_BL,
        segment_ids_BL,
        cache,
        return_logits: bool,
        layers,
        extras: Extras,
        input_embeddings_BLD=None,
        prefix_BL=None,
    ) -> ModelOutput:
        """Forward of new tokens (or given embeddings) against a KV cache (deterministic:
        no dropout). Of the `extras`, only bottleneck adapters run here: prompt and prefix
        tuning enter a cache once, before the first token (`llm.model.prime_cache`)."""
        if extras.n_virtual:
            raise ValueError(
                "prompt / prefix tuning enter a KV cache through llm.model.prime_cache, "
                "not through each decode step's extras"
            )
        positions_BL, kv_positions_BS, kv_segment_ids_BS = kv_cache.step_layout(
            cache, segment_ids_BL
        )
        x_BLD = self.embed(tokens_BL, positions_BL, input_embeddings_BLD)
        graphdef, stacked = nnx.split(self.blocks)

        def body(carry, layer):
            x_BLD, k_YBKSH, v_YBKSH = carry
            layer_state, index, sliced = layer
            view = LayerCache(k_YBKSH, v_YBKSH, index, kv_positions_BS, kv_segment_ids_BS)
            block = nnx.merge(graphdef, layer_state)
            out = block(
                x_BLD, positions_BL, segment_ids_BL, None, view, LayerExtras.of(sliced, False),
                prefix_BL=prefix_BL,
            )  # fmt: skip
            return (out.hidden_BLD, out.cache.k_YBKSH, out.cache.v_YBKSH), out.aux_losses

        carry = (x_BLD, cache.k_YBKSH, cache.v_YBKSH)
        (x_BLD, k_YBKSH, v_YBKSH), aux_Y = self._over_layers(
            body, carry, stacked, layers, extras.layer_slices()
        )
        if self.final_norm is not None:
            x_BLD = self.final_norm(x_BLD)
        new_cache = kv_cache.KVCache(k_YBKSH, v_YBKSH, kv_cache.advance(cache, segment_ids_BL))
        logits = self.logits(x_BLD) if return_logits else None
        return ModelOutput(logits, x_BLD, aux_losses=sum_layers(aux_Y), cache=new_cache)

    def embed(
        self,
        tokens_BL: Array,
        positions_BL: Array,
        x_BLD: Array | None = None,
        token_types_BL: Array | None = None,
    ) -> Array:
        """Token embeddings (or the given ones) plus absolute position information, plus
        token-type embeddings (type 0 where `token_types_BL` is None), then `embed_norm`."""
        cfg = self.cfg
        if x_BLD is None:
            x_BLD = _lookup(self.token_embed.get_value(), tokens_BL)
        x_BLD = x_BLD.astype(cfg.dtype)
        if self.pos_embed is not None:
            x_BLD += jnp.take(self.pos_embed[...], positions_BL, axis=0).astype(cfg.dtype)
        elif cfg.pos_encoding == "sinusoidal":
            x_BLD += positions.sinusoidal(positions_BL, cfg.d_model).astype(cfg.dtype)
        if self.type_embed is not None:
            types_BL = jnp.zeros_like(positions_BL) if token_types_BL is None else token_types_BL
            x_BLD += jnp.take(self.type_embed[...], types_BL, axis=0).astype(cfg.dtype)
        elif token_types_BL is not None:
            raise ValueError("token_types_BL given, but model.type_vocab_size=0 (no type table)")
        if self.embed_norm is not None:
            x_BLD = self.embed_norm(x_BLD)
        return x_BLD

    def _check_virtual(self, L: int, extras: Extras) -> int:
        """P, the virtual tokens ahead of each document; learned positions must cover them."""
        P = extras.n_virtual
        if P and self.pos_embed is not None and L + P > self.cfg.max_seq_len:
            raise ValueError(
                f"{P} virtual tokens + {L} tokens exceed model.max_seq_len="
                f"{self.cfg.max_seq_len}, the learned position table (real tokens sit at P + p)"
            )
        return P

    def _prepend(self, prompt_PD, x_BLD, positions_BL, segment_ids_BL):
        """(embeddings, positions, segment ids) with the virtual tokens of prompt tuning
        ahead of each row: positions 0..P-1, segment `SHARED` (seen by every document)."""
        if prompt_PD is None:
            return x_BLD, positions_BL, segment_ids_BL
        B, P = x_BLD.shape[0], prompt_PD.shape[0]
        pos_BP = default_positions(B, P)
        prompt_BPD = self.embed(None, pos_BP, jnp.broadcast_to(prompt_PD, (B, *prompt_PD.shape)))
        return (
            jnp.concatenate([prompt_BPD, x_BLD], axis=1),
            jnp.concatenate([pos_BP, positions_BL], axis=1),
            jnp.concatenate([jnp.full((B, P), SHARED, segment_ids_BL.dtype), segment_ids_BL], 1),
        )

    def logits(self, x_BLD: Array) -> Array:
        """Output layer: the tied embedding (transposed) or the separate lm_head."""
        dtype = self.cfg.dtype
        x_BLD = x_BLD.astype(dtype)
        if self.lm_head is None:
            table_VD = self.token_embed.get_value()
            if quantized.is_qarray(table_VD):
                B, L, D = x_BLD.shape
                return quantized.matmul_t(x_BLD.reshape(B * L, D), table_VD).reshape(B, L, -1)
            return jnp.einsum("BLD,VD->BLV", x_BLD, table_VD.astype(dtype))
        head_DV = self.lm_head.get_value()
        if quantized.is_qarray(head_DV):
            B, L, D = x_BLD.shape
            return quantized.matmul(x_BLD.reshape(B * L, D), head_DV).reshape(B, L, -1)
        return jnp.einsum("BLD,DV->BLV", x_BLD, head_DV.astype(dtype))

    def _run_blocks(
        self, x_BLD, positions_BL, segment_ids_BL, key, *, collect: bool, attention: bool,
        layers, extras: Extras, prefix_BL=None,
    ):  # fmt: skip
        """Scans the stacked blocks (or loops over `layers`, the per-layer params, or over
        slices of the stacked ones); returns the output and, per layer, the block's output
        (if `collect`, else None), auxiliary losses and attention probabilities (if
        `attention`, else None)."""
        graphdef, stacked = nnx.split(self.blocks)
        keys_Y = None if key is None else jax.random.split(key, self.cfg.n_layers)
        shared = extras.n_virtual > 0

        def body(x_BLD, layer):
            layer_state, index, sliced = layer
            layer_key = None if keys_Y is None else keys_Y[index]
            block = nnx.merge(graphdef, layer_state)
            out = block(x_BLD, positions_BL, segment_ids_BL, layer_key, None,
                        LayerExtras.of(sliced, shared), return_attention=attention,
                        prefix_BL=prefix_BL)  # fmt: skip
            per_layer = (out.hidden_BLD if collect else None, out.aux_losses, out.attention_BNLS)
            return out.hidden_BLD, per_layer

        if self.cfg.remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[self.cfg.remat], prevent_cse=False)
        return self._over_layers(body, x_BLD, stacked, layers, extras.layer_slices())

    def _over_layers(self, body, carry, stacked, layers, extras_Y=None):
        """`body(carry, (layer params, layer index, layer's extras))` over the layers: a
        `lax.scan` over the stacked params (and `extras_Y`, a pytree with a leading layers
        axis), or, with `scan_layers=False` or per-layer `layers` given, a Python loop (the
        index is then a Python int, so indexing with it is static). Returns the final carry
        and the per-layer outputs stacked along a leading layers axis (a pytree, None leaves
        staying None): auxiliary losses come back this way, not in the carry, because the
        carry's structure must be known before the first layer has run."""
        n = self.cfg.n_layers
        if layers is None and self.cfg.scan_layers:
            xs = (stacked, jnp.arange(n, dtype=jnp.int32), extras_Y)
            return jax.lax.scan(body, carry, xs)
        outs = []
        for i, layer_state in enumerate(layers or _slices(stacked, n)):
            carry, out = body(carry, (layer_state, i, jax.tree.map(lambda a, i=i: a[i], extras_Y)))
            outs.append(out)
        return carry, jax.tree.map(lambda *per_layer: jnp.stack(per_layer), *outs)


def _lookup(table_VD, tokens_BL: Array) -> Array:
    """Embedding rows of a float or quantized (`QArray`) table."""
    if quantized.is_qarray(table_VD):
        return quantized.take(table_VD, tokens_BL)
    return jnp.take(table_VD, tokens_BL, axis=0)


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
