"""The attention layer: projections, RoPE, QK-norm, then a backend from `llm.ops.attention`.

Multi-head, grouped-query and multi-query attention are one code path: the number of
key/value heads K divides the number of query heads N (MHA: K = N, MQA: K = 1).
QK-norm (Dehghani et al., 2023, arXiv:2302.05442; OLMo-2, Qwen3) normalises each query and
key head with RMSNorm over the head dimension before RoPE.
"""

from __future__ import annotations

import jax
from flax import nnx

from llm.config import ModelConfig
from llm.model import positions
from llm.model.layers import Linear, RMSNorm
from llm.ops import masks
from llm.ops.attention import attention
from llm.typing import Array


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, out_std: float, rngs: nnx.Rngs):
        self.cfg = cfg
        D, N, K, H = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size
        common = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)

        def proj(spec, shape, axes, bias, bias_axes, std):
            bias_shape = shape[1:] if bias else None
            return Linear(
                spec, shape, axes, bias_shape=bias_shape, bias_axes=bias_axes, std=std, **common
            )

        self.q = proj(
            "BLD,DNH->BLNH",
            (D, N, H),
            ("embed", "heads", "head_dim"),
            cfg.qkv_bias,
            ("heads", "head_dim"),
            cfg.init_std,
        )
        self.k = proj(
            "BSD,DKH->BSKH",
            (D, K, H),
            ("embed", "kv_heads", "head_dim"),
            cfg.qkv_bias,
            ("kv_heads", "head_dim"),
            cfg.init_std,
        )
        self.v = proj(
            "BSD,DKH->BSKH",
            (D, K, H),
            ("embed", "kv_heads", "head_dim"),
            cfg.qkv_bias,
            ("kv_heads", "head_dim"),
            cfg.init_std,
        )
        self.o = Linear(
            "BLNH,NHD->BLD",
            (N, H, D),
            ("heads", "head_dim", "embed"),
            bias_shape=(D,) if cfg.out_bias else None,
            bias_axes=("embed",),
            std=out_std,
            **common,
        )
        if cfg.qk_norm:
            norm = dict(eps=cfg.norm_eps, param_dtype=cfg.param_dtype, rngs=rngs)
            self.q_norm = RMSNorm(H, "head_dim", **norm)
            self.k_norm = RMSNorm(H, "head_dim", **norm)
        else:
            self.q_norm = self.k_norm = None

    def __call__(
        self, x_BLD: Array, positions_BL: Array, segment_ids_BL: Array, dropout_key: Array | None
    ) -> Array:
        cfg = self.cfg
        q_BLNH, k_BLKH, v_BLKH = self.q(x_BLD), self.k(x_BLD), self.v(x_BLD)
        if self.q_norm is not None:
            q_BLNH, k_BLKH = self.q_norm(q_BLNH), self.k_norm(k_BLKH)
        if cfg.pos_encoding == "rope":
            inv_freq = positions.rope_inv_freq(cfg)
            q_BLNH = positions.apply_rope(q_BLNH, positions_BL, inv_freq)
            k_BLKH = positions.apply_rope(k_BLKH, positions_BL, inv_freq)
        slopes = masks.alibi_slopes(cfg.n_heads) if cfg.pos_encoding == "alibi" else None
        out_BLNH = attention(
            q_BLNH,
            k_BLKH,
            v_BLKH,
            q_segment_ids_BL=segment_ids_BL,
            q_positions_BL=positions_BL,
            causal=True,
            sliding_window=cfg.sliding_window,
            alibi_slopes_N=slopes,
            softcap=cfg.attn_logit_softcap,
            dropout_rate=cfg.attn_dropout if dropout_key is not None else 0.0,
            dropout_key=dropout_key,
            impl=cfg.attention_impl,
        )
        return self.o(out_BLNH)


def split_key(key: Array | None, n: int) -> list[Array | None]:
    """`n` independent keys from `key`, or `n` Nones when running deterministically."""
    return [None] * n if key is None else list(jax.random.split(key, n))
