"""The attention layer: projections, RoPE, QK-norm, then a backend from `llm.ops.attention`.

Multi-head, grouped-query and multi-query attention are one code path: the number of
key/value heads K divides the number of query heads N (MHA: K = N, MQA: K = 1).
QK-norm (Dehghani et al., 2023, arXiv:2302.05442; OLMo-2, Qwen3) normalises each query and
key head with RMSNorm over the head dimension before RoPE.

Prefix and prompt tuning (llm/model/extras.py) add keys that every packed document sees
(segment id `SHARED`). Equal segment ids cannot express that, so those runs build the dense
mask here (`extras.shared_mask`) and call the mask-taking backends directly: `xla`, or
`xla_flash` without attention dropout. The kernels that take segment ids (`pallas`) and the
`jax` / `cudnn` paths are refused with an error rather than given a wrong mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from llm.config import ModelConfig
from llm.model import kv_cache, positions
from llm.model.extras import SHARED, LayerExtras, shared_mask
from llm.model.layers import Linear, RMSNorm
from llm.model.outputs import LayerOutput
from llm.model.shaw import ShawTables
from llm.ops import masks
from llm.ops.attention import attention, attention_probs
from llm.ops.attention_xla import attention_reference, mix_values
from llm.ops.attention_xla_flash import causal_block_count, flash_attention_xla
from llm.sharding.constraints import constrain
from llm.typing import Array


@struct.dataclass
class LayerCache:
    """What one layer's attention needs of the KV cache (see `llm/model/kv_cache.py`).

    The stacked caches travel whole (the layer writes its slice `layer` in place); the kv
    positions and segment ids are shared by every layer.
    """

    k_YBKSH: kv_cache.KV
    v_YBKSH: kv_cache.KV
    layer: Array
    kv_positions_BS: Array
    kv_segment_ids_BS: Array


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
        self.shaw = ShawTables(cfg, rngs) if cfg.pos_encoding == "shaw" else None

    def __call__(
        self,
        x_BLD: Array,
        positions_BL: Array,
        segment_ids_BL: Array,
        dropout_key: Array | None,
        cache: LayerCache | None = None,
        extras: LayerExtras | None = None,
        *,
        return_probs: bool = False,
        prefix_BL: Array | None = None,
    ) -> LayerOutput:
        """Self-attention; with `cache`, also over the cached keys (the output carries the
        updated cache; else its cache is None). `extras` (prefix / prompt tuning) adds keys
        shared by every packed document, see `_shared`. `return_probs`: the reference
        backend's probabilities in `attention_BNLS`, the output mixed from them (no cache).
        `prefix_BL` (prefix-LM): True on tokens every query of their document sees; with a
        cache they are the new tokens' flags (the cached slots are all in the past).

        With a cache the new keys/values are written at slots `positions_BL` of this layer's
        slice first, then the queries attend to the whole slice, masked by kv segment ids.
        """
        cfg = self.cfg
        q_BLNH, k_BLKH, v_BLKH = self.q(x_BLD), self.k(x_BLD), self.v(x_BLD)
        if self.q_norm is not None:
            q_BLNH, k_BLKH = self.q_norm(q_BLNH), self.k_norm(k_BLKH)
        if cfg.pos_encoding == "rope":
            inv_freq = positions.rope_inv_freq(cfg)
            q_BLNH = positions.apply_rope(q_BLNH, positions_BL, inv_freq)
            k_BLKH = positions.apply_rope(k_BLKH, positions_BL, inv_freq)
        # queries keep the sequence split (sequence parallelism); keys and values are whole
        # along the sequence: GSPMD all-gathers them over the sequence axis for attention
        q_BLNH = constrain(q_BLNH, ("batch", "length", "heads", None))
        k_BLKH = constrain(k_BLKH, ("batch", None, "kv_heads", None))
        v_BLKH = constrain(v_BLKH, ("batch", None, "kv_heads", None))
        shared = extras is not None and extras.shared
        rules = self._mask_rules(prefix_BL, positions_BL, cache, shared, return_probs)
        if shared:
            if not cfg.causal:
                raise ValueError("prefix / prompt tuning build causal masks: not causal=false")
            if cache is not None:
                raise ValueError("prefix / prompt tuning do not decode with a KV cache yet")
            out_BLNH = self._shared(q_BLNH, k_BLKH, v_BLKH, positions_BL, segment_ids_BL,
                                    extras, dropout_key)  # fmt: skip
            return LayerOutput(self.o(out_BLNH), None)
        slopes = masks.alibi_slopes(cfg.n_heads) if cfg.pos_encoding == "alibi" else None
        if return_probs:
            if dropout_key is not None and cfg.attn_dropout > 0.0:
                raise ValueError("return_attention reads probabilities without attention dropout")
            probs_BNLS = attention_probs(
                q_BLNH, k_BLKH, q_segment_ids_BL=segment_ids_BL, q_positions_BL=positions_BL,
                sliding_window=cfg.sliding_window, alibi_slopes_N=slopes,
                softcap=cfg.attn_logit_softcap, causal=cfg.causal,
                pattern=cfg.attention_pattern, pattern_block=cfg.attention_block,
            )  # fmt: skip
            out_BLNH = mix_values(probs_BNLS, v_BLKH).astype(q_BLNH.dtype)
            return LayerOutput(self.o(out_BLNH), None, attention_BNLS=probs_BNLS)
        kv_ids = {}
        if cache is not None:
            if not cfg.causal:
                raise ValueError("model.causal=false is an encoder: it has no KV cache to decode")
            (k_all, k_BKSH), (v_all, v_BKSH) = (
                kv_cache.write_layer(c, cache.layer, new, positions_BL)
                for c, new in ((cache.k_YBKSH, k_BLKH), (cache.v_YBKSH, v_BLKH))
            )
            # [B, S, K, H] views of the cache (an int8 one read as codes * scale): the
            # backends' transposes cancel them
            k_BKSH, v_BKSH = (kv_cache.dequantize(c, k_BLKH.dtype) for c in (k_BKSH, v_BKSH))
            k_BLKH, v_BLKH = k_BKSH.transpose(0, 2, 1, 3), v_BKSH.transpose(0, 2, 1, 3)
            cache = cache.replace(k_YBKSH=k_all, v_YBKSH=v_all)
            segment_ids_BL = (segment_ids_BL != 0).astype(jnp.int32)
            kv_ids = dict(
                kv_segment_ids_BS=cache.kv_segment_ids_BS, kv_positions_BS=cache.kv_positions_BS
            )
        out_BLNH = attention(
            q_BLNH,
            k_BLKH,
            v_BLKH,
            q_segment_ids_BL=segment_ids_BL,
            q_positions_BL=positions_BL,
            **kv_ids,
            causal=cfg.causal,
            sliding_window=cfg.sliding_window,
            alibi_slopes_N=slopes,
            softcap=cfg.attn_logit_softcap,
            dropout_rate=cfg.attn_dropout if dropout_key is not None else 0.0,
            dropout_key=dropout_key,
            impl=cfg.attention_impl,
            **rules,
        )
        return LayerOutput(self.o(out_BLNH), cache)

    def _mask_rules(self, prefix_BL, positions_BL, cache, shared: bool, probs: bool) -> dict:
        """`attention`'s sparse-pattern, prefix-LM and Shaw (llm/model/shaw.py) arguments.
        With a cache the new tokens' prefix flags are scattered to their slots (older slots
        are in every query's past).
        Prefix / prompt tuning build their own mask and `return_probs` its causal one: both
        refuse a rule they would drop."""
        cfg, rules = self.cfg, {}
        if cfg.attention_pattern != "dense":
            rules.update(pattern=cfg.attention_pattern, pattern_block=cfg.attention_block)
        if prefix_BL is not None:
            if probs:
                raise ValueError("return_attention reads causal probabilities: not with prefix_BL")
            kv_prefix_BS = prefix_BL.astype(bool)
            if cache is not None:
                B, S = cache.kv_positions_BS.shape
                rows_B1 = jnp.arange(B, dtype=jnp.int32)[:, None]
                empty_BS = jnp.zeros((B, S), bool)
                kv_prefix_BS = empty_BS.at[rows_B1, positions_BL].set(kv_prefix_BS, mode="drop")
            rules["kv_prefix_BS"] = kv_prefix_BS
        if self.shaw is not None:
            if probs:
                raise ValueError(
                    "return_attention: pos_encoding shaw's value term is not in the "
                    "probabilities; read them with another pos_encoding"
                )
            rules["shaw_tables"] = self.shaw.tables(cfg.dtype)
        if rules and shared:
            raise ValueError(
                "prefix / prompt tuning build their own attention mask: not with a sparse "
                "model.attention_pattern, prefix_BL or pos_encoding shaw"
            )
        return rules

    def _shared(self, q_BLNH, k_BLKH, v_BLKH, positions_BL, segment_ids_BL, extras, key):
        """Attention over [prefix keys; own keys], the prefix (and any token of segment
        `SHARED`, a virtual token of prompt tuning) visible to every packed document."""
        cfg = self.cfg
        if cfg.pos_encoding == "alibi":
            raise ValueError("prefix / prompt tuning: ALiBi has no distance to a shared key")
        B, L = segment_ids_BL.shape
        index_causal_LS = masks.index_causal_mask(L)
        k_BSKH, v_BSKH, kv_seg_BS, kv_pos_BS = k_BLKH, v_BLKH, segment_ids_BL, positions_BL
        if extras.prefix_k_PKH is not None:
            P = extras.prefix_k_PKH.shape[0]
            k_BSKH, v_BSKH = (
                jnp.concatenate([jnp.broadcast_to(p[None].astype(x.dtype), (B, *p.shape)), x], 1)
                for p, x in ((extras.prefix_k_PKH, k_BLKH), (extras.prefix_v_PKH, v_BLKH))
            )
            kv_seg_BS = jnp.concatenate([jnp.full((B, P), SHARED, jnp.int32), kv_seg_BS], 1)
            kv_pos_BS = jnp.concatenate([masks.default_positions(B, P), kv_pos_BS], 1)
            index_causal_LS = jnp.concatenate([jnp.ones((L, P), bool), index_causal_LS], 1)
        mask_BLS = shared_mask(segment_ids_BL, kv_seg_BS, positions_BL, kv_pos_BS,
                               cfg.sliding_window) & index_causal_LS  # fmt: skip
        rate = cfg.attn_dropout if key is not None else 0.0
        if cfg.attention_impl not in ("xla", "xla_flash", "auto"):
            raise ValueError(
                f"prefix / prompt tuning need a dense attention mask: model.attention_impl="
                f"{cfg.attention_impl!r} takes segment ids only; use xla, xla_flash or auto"
            )
        qkv, softcap = (q_BLNH, k_BSKH, v_BSKH), cfg.attn_logit_softcap
        if cfg.attention_impl == "xla" or rate > 0.0:
            return attention_reference(
                *qkv, mask_BLS, softcap=softcap, dropout_rate=rate, dropout_key=key
            )
        blocks = causal_block_count(L) if extras.prefix_k_PKH is None else 1
        return flash_attention_xla(*qkv, mask_BLS, softcap=softcap, causal_blocks=blocks)


def split_key(key: Array | None, n: int) -> list[Array | None]:
    """`n` independent keys from `key`, or `n` Nones when running deterministically."""
    return [None] * n if key is None else list(jax.random.split(key, n))
