"""Attention backend dispatch: one entry point, backends in their own modules.

    attention(q_BLNH, k_BSKH, v_BSKH, ..., impl="xla" | "jax" | "cudnn" | "pallas" | "auto")

* ``xla``    the plain jnp reference (`attention_xla.py`); supports every feature.
* ``jax``    `jax.nn.dot_product_attention` with its XLA implementation.
* ``cudnn``  `jax.nn.dot_product_attention(implementation="cudnn")`: GPU only.
* ``pallas`` our flash-attention kernels (`llm/kernels/`): Triton on GPU, Mosaic on TPU. On CPU
             (no Pallas compiler) the GPU kernel runs in Pallas' interpreter: slow, exact, and
             how the tests check the kernels and the model with ``attention_impl="pallas"``.
             Everything but attention dropout.
* ``auto``   the best available for the backend and features, see `choose_impl`.

Masks come from positions and segment ids (see `masks.py`); a feature a backend lacks raises
`ValueError` naming the feature and backend rather than being silently dropped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llm.ops import masks
from llm.ops.attention_xla import attention_reference
from llm.typing import Array

IMPLEMENTATIONS = ("xla", "jax", "cudnn", "pallas", "auto")


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
) -> Array:
    """Multi-head / grouped-query attention; returns out_BLNH in q's dtype.

    Segment ids default to one segment (no padding); positions default to 0..L-1 and 0..S-1.
    """
    B, L, N, _ = q_BLNH.shape
    S, K = k_BSKH.shape[1], k_BSKH.shape[2]
    if N % K:
        raise ValueError(f"query heads {N=} must be a multiple of key/value heads {K=}")
    if q_segment_ids_BL is None:
        q_segment_ids_BL = jnp.ones((B, L), jnp.int32)
    if kv_segment_ids_BS is None:
        kv_segment_ids_BS = q_segment_ids_BL if S == L else jnp.ones((B, S), jnp.int32)
    if q_positions_BL is None:
        q_positions_BL = masks.default_positions(B, L)
    if kv_positions_BS is None:
        kv_positions_BS = q_positions_BL if S == L else masks.default_positions(B, S)
    if impl == "auto":
        impl = choose_impl(
            jax.default_backend(),
            dtype=q_BLNH.dtype,
            head_dim=q_BLNH.shape[-1],
            softcap=softcap,
            dropout_rate=dropout_rate,
        )
    if impl == "pallas":
        _require(dropout_rate == 0.0, "attention dropout", impl)
        return _pallas(
            q_BLNH,
            k_BSKH,
            v_BSKH,
            (q_segment_ids_BL, kv_segment_ids_BS, q_positions_BL, kv_positions_BS),
            alibi_slopes_N,
            causal=causal,
            sliding_window=sliding_window,
            softcap=softcap,
        )
    mask_BLS = masks.attention_mask(
        q_segment_ids_BL,
        kv_segment_ids_BS,
        q_positions_BL,
        kv_positions_BS,
        causal=causal,
        sliding_window=sliding_window,
    )
    bias_BNLS = None
    if alibi_slopes_N is not None:
        bias_BNLS = masks.alibi_bias(alibi_slopes_N, q_positions_BL, kv_positions_BS)
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
        )
    if impl in ("jax", "cudnn"):
        _require(softcap is None, "logit soft-capping", impl)
        _require(dropout_rate == 0.0, "attention dropout", impl)
        return _jax_nn(q_BLNH, k_BSKH, v_BSKH, mask_BLS, bias_BNLS, impl)
    raise ValueError(f"unknown attention impl {impl!r}; choose one of {IMPLEMENTATIONS}")


def choose_impl(
    backend: str, *, dtype, head_dim: int, softcap: float | None, dropout_rate: float
) -> str:
    """What ``impl="auto"`` runs: the fastest backend that supports every requested feature.

    Dropout: only the reference has it. GPU: cuDNN's fused kernel for bf16/fp16 with head dims
    it covers and no soft-capping, else our Triton kernel. TPU: our Mosaic kernel. Anything
    else (CPU): the XLA reference, since Pallas would run in its slow interpreter there.
    """
    if dropout_rate > 0.0:
        return "xla"
    if backend == "gpu":
        cudnn_ok = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim in (64, 128)
        return "cudnn" if cudnn_ok and softcap is None else "pallas"
    if backend == "tpu":
        return "pallas"
    return "xla"


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
