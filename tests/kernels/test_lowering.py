"""The kernels compile for their hardware: lowered through jax.export for cuda / tpu here.

Exporting for a platform runs Pallas' real lowering (to Triton IR for GPUs, to the Mosaic
dialect for TPUs) on this CPU-only machine, so a kernel using an op, shape or block layout its
compiler rejects fails CI without the hardware. The backend's own final compile (PTX / Mosaic
layout passes) still only happens on the device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax import export

from llm.kernels import decode_attention, flash_attention_gpu, flash_attention_tpu

TRITON = "__gpu$xla.gpu.triton"
MOSAIC = "tpu_custom_call"
sds = jax.ShapeDtypeStruct


def _attention_args(L, S, N, K, H, dtype):
    return (
        sds((2, L, N, H), dtype),
        sds((2, S, K, H), dtype),
        sds((2, S, K, H), dtype),
        sds((2, L), jnp.int32),
        sds((2, S), jnp.int32),
        sds((2, L), jnp.int32),
        sds((2, S), jnp.int32),
        sds((N,), jnp.float32),
    )


def _train_step(module, **features):
    """Forward + dq/dk/dv: three kernels (forward, dq, dk/dv)."""

    def f(q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes):
        def loss(q, k, v):
            out = module.flash_attention(q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes, **features)
            return out.astype(jnp.float32).sum()

        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    return jax.jit(f)


def _export_text(fn, args, platform: str) -> str:
    checks = [export.DisabledSafetyCheck.custom_call(TRITON)] if platform == "cuda" else []
    return export.export(fn, platforms=[platform], disabled_checks=checks)(*args).mlir_module()


FEATURES = {
    "causal": dict(causal=True),
    "all": dict(causal=True, sliding_window=256, softcap=30.0),
}


@pytest.mark.parametrize("H", [64, 128, 256])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize("features", FEATURES, ids=str)
def test_gpu_kernels_lower_to_triton(H, dtype, features):
    args = _attention_args(L=1000, S=1000, N=8, K=2, H=H, dtype=dtype)
    text = _export_text(_train_step(flash_attention_gpu, **FEATURES[features]), args, "cuda")
    assert text.count(TRITON) == 3
    for name in ("flash_attention_fwd", "flash_attention_dq", "flash_attention_dkv"):
        assert name in text


@pytest.mark.parametrize("H", [64, 128, 256])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize("features", FEATURES, ids=str)
def test_tpu_kernels_lower_to_mosaic(H, dtype, features):
    args = _attention_args(L=1000, S=1000, N=8, K=2, H=H, dtype=dtype)
    text = _export_text(_train_step(flash_attention_tpu, **FEATURES[features]), args, "tpu")
    assert text.count(MOSAIC) == 3
    for name in ("flash_attention_fwd_tpu", "flash_attention_dq_tpu", "flash_attention_dkv_tpu"):
        assert name in text


@pytest.mark.parametrize("H", [64, 128, 256])
def test_decode_kernel_lowers_to_triton(H):
    def f(q, k, v, lengths):
        return decode_attention.decode_attention(q, k, v, lengths, sliding_window=512)

    args = (
        sds((4, 1, 32, H), jnp.bfloat16),
        sds((4, 4096, 8, H), jnp.bfloat16),
        sds((4, 4096, 8, H), jnp.bfloat16),
        sds((4,), jnp.int32),
    )
    text = _export_text(jax.jit(f), args, "cuda")
    assert text.count(TRITON) == 1 and "decode_attention" in text


def test_a_non_kernel_program_has_no_kernel_call():
    """Guards the markers above: plain XLA attention exports without Triton or Mosaic calls."""
    from llm.kernels.flash_common import flash_attention_reference

    args = _attention_args(L=64, S=64, N=2, K=2, H=64, dtype=jnp.bfloat16)
    for platform, marker in (("cuda", TRITON), ("tpu", MOSAIC)):
        assert marker not in _export_text(jax.jit(flash_attention_reference), args, platform)
