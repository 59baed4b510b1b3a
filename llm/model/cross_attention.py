"""T5's attention layer: keys from any sequence, an additive bias, no 1/sqrt(H) scaling.

One module serves the three attentions of an encoder-decoder (Raffel et al., 2020,
arXiv:1910.10683): the encoder's bidirectional self-attention, the decoder's causal
self-attention (keys: its own input, or its KV cache while decoding) and the decoder's
cross-attention (keys: the encoder output, projected once per layer and kept in the cache).
So projecting keys (`kv`) and attending (`__call__`) are separate calls.

Design choices:
* Logits are q.k plus the relative position bias (`relative_bias.py`) with no 1/sqrt(H)
  factor: T5 (Mesh TensorFlow) folds it into the query's initialisation, so the query weights
  are initialised with std `init_std / sqrt(H)` here.
* Bias-free projections; every head has its own key/value head (no grouped queries).
* The reference attention of `llm.ops.attention_xla` (a materialised [B, L, S] mask and an
  additive float32 bias); no fused backend takes T5's bias, so `attention_impl` is refused
  for anything but `auto` / `xla` (`ModelConfig._check_t5`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from llm.config import ModelConfig
from llm.model.layers import Linear
from llm.ops.attention_xla import attention_weights, mix_values
from llm.typing import Array


class CrossAttention(nnx.Module):
    """q from the queries' stream, k/v from a source stream (itself for self-attention)."""

    def __init__(self, cfg: ModelConfig, *, out_std: float, rngs: nnx.Rngs):
        self.cfg = cfg
        D, N, H = cfg.d_model, cfg.n_heads, cfg.head_size
        common = dict(bias_shape=None, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        heads = ("embed", "heads", "head_dim")
        self.q = Linear("BLD,DNH->BLNH", (D, N, H), heads, std=cfg.init_std / math.sqrt(H),
                        **common)  # fmt: skip
        self.k = Linear("BSD,DNH->BSNH", (D, N, H), heads, std=cfg.init_std, **common)
        self.v = Linear("BSD,DNH->BSNH", (D, N, H), heads, std=cfg.init_std, **common)
        self.o = Linear(
            "BLNH,NHD->BLD", (N, H, D), ("heads", "head_dim", "embed"), std=out_std, **common
        )

    def kv(self, source_BSD: Array) -> tuple[Array, Array]:
        """Keys and values [B, S, N, H] of a source stream (cached once for the encoder)."""
        return self.k(source_BSD), self.v(source_BSD)

    def __call__(
        self,
        x_BLD: Array,
        k_BSNH: Array,
        v_BSNH: Array,
        mask_BLS: Array,
        bias_BNLS: Array | None,
        dropout_key: Array | None,
    ) -> Array:
        """softmax(q k^T [+ bias], masked) v, projected back to D; rows with no visible key
        give zeros. Attention dropout (`attn_dropout`) on the probabilities when keyed."""
        q_BLNH = self.q(x_BLD)
        if bias_BNLS is not None:
            bias_BNLS = jnp.broadcast_to(bias_BNLS, (x_BLD.shape[0], *bias_BNLS.shape[1:]))
        probs_BNLS = attention_weights(q_BLNH, k_BSNH, mask_BLS, bias_BNLS=bias_BNLS, scale=1.0)
        rate = self.cfg.attn_dropout
        if dropout_key is not None and rate > 0.0:
            keep = jax.random.bernoulli(dropout_key, 1.0 - rate, probs_BNLS.shape)
            probs_BNLS = jnp.where(keep, probs_BNLS / (1.0 - rate), 0.0)
        return self.o(mix_values(probs_BNLS, v_BSNH).astype(q_BLNH.dtype))
