"""Attention backend dispatch: one entry point, backends in their own modules.

    attention(q_BLNH, k_BSKH, v_BSKH, ..., impl="xla" | "jax" | "cudnn" | "pallas" | "auto")

* ``xla``    the plain jnp reference (`attention_xla.py`); supports every feature.
* ``xla_flash`` flash attention's algorithm in plain XLA (`attention_xla_flash.py`): saves
             the log-sum-exp instead of the probabilities and skips the causal upper
             triangle; the fast path on CPU. Everything but attention dropout.
* ``jax``    `jax.nn.dot_product_attention` with its XLA implementation.
* ``cudnn``  `jax.nn.dot_product_attention(implementation="cudnn")`: GPU only.
* ``pallas`` our flash-attention kernels (`llm/kernels/`): Triton on GPU, Mosaic on TPU. On CPU
             (no Pallas compiler) the GPU kernel runs in Pallas' interpreter: slow, exact, and
             how the tests check the kernels and the model with ``attention_impl="pallas"``.
             Everything but attention dropout.
* ``auto``   the best available for the backend and features, see `choose_impl`.

`decode_attention` is the same choice for a few new tokens against a KV cache.

Masks come from positions and segment ids (see `masks.py`); a feature a backend lacks raises
`ValueError` naming the feature and backend rather than being silently dropped. In causal
self-attention (no key/value ids given and as many keys as queries: the keys are the
queries' own tokens) a query also never sees a key at a later index, whatever the positions.
For positions that increase within each document, as in every batch the data pipeline and
the engine build, that changes nothing; it makes causality hold by construction and lets
blocked backends skip the upper triangle. The Pallas kernels apply the position rule only.
Prefix-LM keys (`kv_prefix_BS`) lift that index rule: a prefix token may be seen by an
earlier query. Sparse patterns and the prefix are dense-mask rules; Shaw's relative
positions are a term of the ``xla`` reference alone: other backends refuse them by name.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llm.ops import masks
from llm.ops.attention_xla import attention_reference, attention_weights, shaw_relative
from llm.ops.attention_xla_flash import causal_block_count, flash_attention_xla
from llm.typing import Array

IMPLEMENTATIONS = ("xla", "xla_flash", "jax", "cudnn", "pallas", "auto")


def attention(
    q_BLNH: Array,
    k_BSKH: Array,
    v_BSKH: Array,
    *,
    q_segment_ids_BL: Array | None = None,
    kv_segment_ids_BS: Array | None = None,
    q_positions_BL: Array | None = None,
    kv_positions_BS: Array | None = None,
    causal: bool = True,
    sliding_window: int | None = None,
    alibi_slopes_N: Array | None = None,
    softcap: float | None = None,
    dropout_rate: float = 0.0,
    dropout_key: Array | None = None,
    impl: str = "xla",
    pattern: str = "dense",
    pattern_block: int = 0,
    kv_prefix_BS: Array | None = None,
    shaw_tables: tuple[Array, Array] | None = None,
) -> Array:
    """Multi-head / grouped-query attention; returns out_BLNH in q's dtype.

    Segment ids default to one segment (no padding); positions default to 0..L-1 and 0..S-1.
    `pattern` / `pattern_block` (a sparse pattern) and `kv_prefix_BS` (prefix-LM: True on
    keys every query of their document sees) are mask rules of `masks.attention_mask`: the
    backends that take a dense mask apply them, ``pallas`` refuses them. `shaw_tables`
    (a^K_RH, a^V_RH): Shaw et al.'s relative positions, in ``xla`` only (``auto`` runs it).
    """
    N, K = q_BLNH.shape[2], k_BSKH.shape[2]
    if N % K:
        raise ValueError(f"query heads {N=} must be a multiple of key/value heads {K=}")
    self_attention = kv_segment_ids_BS is None and kv_positions_BS is None
    self_attention &= k_BSKH.shape[1] == q_BLNH.shape[1]
    ids = _default_ids(
        q_BLNH, k_BSKH, q_segment_ids_BL, kv_segment_ids_BS, q_positions_BL, kv_positions_BS
    )
    rules = {}  # mask rules only the dense-mask backends apply
    if pattern != "dense":
        rules.update(pattern=pattern, block=pattern_block)
    if kv_prefix_BS is not None:
        rules.update(kv_prefix_BS=kv_prefix_BS)
        self_attention = False  # prefix keys may come later than their queries
    if shaw_tables is not None:  # before the mask rules pick xla_flash, which lacks Shaw
        impl = "xla" if impl == "auto" else impl
        _require(impl == "xla", "Shaw relative positions", impl)
        rules["shaw_tables"] = shaw_tables
    if impl == "auto" and rules:  # the fast dense-mask backend (pallas would refuse them)
        impl = "xla" if dropout_rate > 0.0 else "xla_flash"
    if impl == "auto":
        impl = choose_impl(
            jax.default_backend(),
            dtype=q_BLNH.dtype,
            head_dim=q_BLNH.shape[-1],
            softcap=softcap,
            dropout_rate=dropout_rate,
        )
    features = dict(causal=causal, sliding_window=sliding_window, softcap=softcap)
    if impl == "pallas":
        _require(dropout_rate == 0.0, "attention dropout", impl)
        _require("pattern" not in rules, f"sparse attention pattern {pattern!r}", impl)
        _require("kv_prefix_BS" not in rules, "prefix-LM masking", impl)
        return _pallas(q_BLNH, k_BSKH, v_BSKH, ids, alibi_slopes_N, **features)
    if impl not in ("xla", "xla_flash", "jax", "cudnn"):
        raise ValueError(f"unknown attention impl {impl!r}; choose one of {IMPLEMENTATIONS}")
    return _dense(
        q_BLNH,
        k_BSKH,
        v_BSKH,
        ids,
        alibi_slopes_N,
        dropout_rate,
        dropout_key,
        impl=impl,
        index_causal=causal and self_attention,
        rules=rules,
        **features,
    )


def _default_ids(q_BLNH, k_BSKH, q_seg, kv_seg, q_pos, kv_pos) -> tuple[Array, ...]:
    """Fill in segment ids (one segment) and positions (0..L-1, 0..S-1) the caller left out."""
    B, L = q_BLNH.shape[:2]
    S = k_BSKH.shape[1]
    if q_seg is None:
        q_seg = jnp.ones((B, L), jnp.int32)
    if kv_seg is None:
        kv_seg = q_seg if S == L else jnp.ones((B, S), jnp.int32)
    if q_pos is None:
        q_pos = masks.default_positions(B, L)
    if kv_pos is None:
        kv_pos = q_pos if S == L else masks.default_positions(B, S)
    return q_seg, kv_seg, q_pos, kv_pos


def _dense(
    q_BLNH,
    k_BSKH,
    v_BSKH,
    ids,
    alibi_slopes_N,
    dropout_rate,
    dropout_key,
    *,
    impl,
    causal,
    index_causal,
    sliding_window,
    softcap,
    rules,
) -> Array:
    """Backends that take a materialised [B, L, S] mask: the references and jax.nn."""
    rules = dict(rules)
    shaw = _shaw_terms(rules.pop("shaw_tables", None), ids)
    mask_BLS, bias_BNLS = _mask_and_bias(
        ids, alibi_slopes_N, causal, index_causal, sliding_window, **rules
    )
    if impl == "xla":
        return attention_reference(
            q_BLNH,
            k_BSKH,
            v_BSKH,
            mask_BLS,
            bias_BNLS=bias_BNLS,
            softcap=softcap,
            dropout_rate=dropout_rate,
            dropout_key=dropout_key,
            **shaw,
        )
    _require(dropout_rate == 0.0, "attention dropout", impl)
    if impl == "xla_flash":
        blocks = causal_block_count(q_BLNH.shape[1]) if index_causal else 1
        return flash_attention_xla(
            q_BLNH, k_BSKH, v_BSKH, mask_BLS, bias_BNLS=bias_BNLS, softcap=softcap,
            causal_blocks=blocks,
        )  # fmt: skip
    _require(softcap is None, "logit soft-capping", impl)
    return _jax_nn(q_BLNH, k_BSKH, v_BSKH, mask_BLS, bias_BNLS, impl)


def _shaw_terms(tables, ids) -> dict:
    """The reference's rel_k_BLSH / rel_v_BLSH from Shaw tables (a^K_RH, a^V_RH) and the
    query / key positions; {} without tables."""
    if tables is None:
        return {}
    q_pos, kv_pos = ids[2], ids[3]
    rel_k_BLSH, rel_v_BLSH = (shaw_relative(t_RH, q_pos, kv_pos) for t_RH in tables)
    return dict(rel_k_BLSH=rel_k_BLSH, rel_v_BLSH=rel_v_BLSH)


def _mask_and_bias(ids, alibi_slopes_N, causal, index_causal, sliding_window, **rules):
    """The dense mask_BLS of the segment, position, causal and window rules (and `rules`:
    sparse pattern, prefix), and the ALiBi bias_BNLS (None without slopes)."""
    q_seg, kv_seg, q_pos, kv_pos = ids
    mask_BLS = masks.attention_mask(
        q_seg, kv_seg, q_pos, kv_pos, causal=causal, sliding_window=sliding_window, **rules
    )
    if index_causal:
        mask_BLS &= masks.index_causal_mask(q_pos.shape[1])
    bias_BNLS = None
    if alibi_slopes_N is not None:
        bias_BNLS = masks.alibi_bias(alibi_slopes_N, q_pos, kv_pos)
    return mask_BLS, bias_BNLS


def attention_probs(
    q_BLNH: Array,
    k_BSKH: Array,
    *,
    q_segment_ids_BL: Array | None = None,
    q_positions_BL: Array | None = None,
    sliding_window: int | None = None,
    alibi_slopes_N: Array | None = None,
    softcap: float | None = None,
    causal: bool = True,
    pattern: str = "dense",
    pattern_block: int = 0,
) -> Array:
    """The reference's probabilities probs_BNLS (float32) of self-attention (causal, or
    bidirectional for an encoder) under the same mask rules as `attention`: for reading,
    plotting and head analysis (llm/interp)."""
    rules = {} if pattern == "dense" else dict(pattern=pattern, block=pattern_block)
    N, K = q_BLNH.shape[2], k_BSKH.shape[2]
    if N % K:
        raise ValueError(f"query heads {N=} must be a multiple of key/value heads {K=}")
    if k_BSKH.shape[1] != q_BLNH.shape[1]:
        raise ValueError(
            f"attention_probs is for self-attention: {q_BLNH.shape[1]} queries, "
            f"{k_BSKH.shape[1]} keys"
        )
    ids = _default_ids(q_BLNH, k_BSKH, q_segment_ids_BL, None, q_positions_BL, None)
    mask_BLS, bias_BNLS = _mask_and_bias(
        ids, alibi_slopes_N, causal, causal, sliding_window, **rules
    )
    return attention_weights(q_BLNH, k_BSKH, mask_BLS, bias_BNLS=bias_BNLS, softcap=softcap)


def choose_impl(
    backend: str, *, dtype, head_dim: int, softcap: float | None, dropout_rate: float
) -> str:
    """What ``impl="auto"`` runs: the best backend that supports every requested feature.

    Dropout: only the reference has it. GPU and TPU: our Pallas kernels, which take positions
    and segment ids directly, skip masked blocks and keep memory linear in sequence length.
    (``cudnn`` stays selectable, but through `jax.nn.dot_product_attention` it needs the dense
    [B, L, S] mask built here, quadratic in memory.) Anything else (CPU): ``xla_flash``,
    since Pallas would run in its slow interpreter there.
    """
    del dtype, head_dim, softcap  # every dtype, head dim and soft-cap is supported by pallas
    if dropout_rate > 0.0:
        return "xla"
    if backend in ("gpu", "tpu"):
        return "pallas"
    return "xla_flash"


def _pallas(q_BLNH, k_BSKH, v_BSKH, ids, alibi_slopes_N, **features) -> Array:
    """Our kernels: Triton on GPU, Mosaic on TPU, the GPU kernel interpreted on CPU."""
    from llm.kernels import flash_attention_gpu, flash_attention_tpu

    backend = jax.default_backend()
    if backend == "tpu":
        return flash_attention_tpu.flash_attention(
            q_BLNH, k_BSKH, v_BSKH, *ids, alibi_slopes_N, **features
        )
    if backend not in ("gpu", "cpu"):
        raise ValueError(f"attention impl 'pallas' has no kernel for backend {backend!r}")
    return flash_attention_gpu.flash_attention(
        q_BLNH, k_BSKH, v_BSKH, *ids, alibi_slopes_N, interpret=backend == "cpu", **features
    )


def decode_attention(
    q_BTNH: Array,
    k_BSKH: Array,
    v_BSKH: Array,
    lengths_B: Array,
    *,
    sliding_window: int | None = None,
    alibi_slopes_N: Array | None = None,
    softcap: float | None = None,
    impl: str = "xla",
) -> Array:
    """T new tokens per sequence against a KV cache holding lengths_B valid entries (incl. them).

    Query t sits at position lengths - T + t; cache entry s is at position s and valid while
    s < length. ``pallas`` (and ``auto`` on GPU) runs the decode kernel, which stops at each
    sequence's own length; on TPU ``pallas`` is the flash kernel, whose block ranges skip the
    unused cache. Other impls run `attention` with the equivalent segment ids and positions.
    """
    if impl == "auto":
        impl = "pallas" if jax.default_backend() in ("gpu", "tpu") else "xla"
    features = dict(sliding_window=sliding_window, softcap=softcap)
    if impl == "pallas" and jax.default_backend() in ("gpu", "cpu"):
        from llm.kernels import decode_attention as kernel

        return kernel.decode_attention(
            q_BTNH,
            k_BSKH,
            v_BSKH,
            lengths_B,
            alibi_slopes_N,
            interpret=jax.default_backend() == "cpu",
            **features,
        )
    B, T = q_BTNH.shape[:2]
    S = k_BSKH.shape[1]
    kv_positions_BS = masks.default_positions(B, S)
    lengths_B1 = lengths_B[:, None].astype(jnp.int32)
    return attention(
        q_BTNH,
        k_BSKH,
        v_BSKH,
        q_segment_ids_BL=jnp.ones((B, T), jnp.int32),
        kv_segment_ids_BS=(kv_positions_BS < lengths_B1).astype(jnp.int32),
        q_positions_BL=lengths_B1 - T + jnp.arange(T, dtype=jnp.int32),
        kv_positions_BS=kv_positions_BS,
        causal=True,
        alibi_slopes_N=alibi_slopes_N,
        impl=impl,
        **features,
    )


def _jax_nn(q_BLNH, k_BSKH, v_BSKH, mask_BLS, bias_BNLS, impl: str) -> Array:
    if impl == "cudnn" and jax.default_backend() != "gpu":
        raise ValueError(
            f"attention impl 'cudnn' needs a GPU; backend is {jax.default_backend()!r}"
        )
    out_BLNH = jax.nn.dot_product_attention(
        q_BLNH,
        k_BSKH,
        v_BSKH,
        bias=None if bias_BNLS is None else bias_BNLS.astype(q_BLNH.dtype),
        mask=mask_BLS[:, None],
        implementation="cudnn" if impl == "cudnn" else "xla",
    )
    any_visible_BL = mask_BLS.any(-1)
    return jnp.where(any_visible_BL[:, :, None, None], out_BLNH, 0).astype(q_BLNH.dtype)


def _require(ok: bool, feature: str, impl: str) -> None:
    if not ok:
        raise ValueError(f"{feature} is not supported by attention impl {impl!r}; use 'xla'")
