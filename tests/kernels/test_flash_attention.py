"""Both flash-attention kernels (interpreted) equal the jnp reference: output, dq, dk, dv.

The sweep crosses every mask feature (causal, sliding window, packed segments with padding,
orphan query rows, decode-style positions), GQA ratios 1/2/3/4, ALiBi, soft-capping, uneven
lengths (padding inside the kernels), several block shapes and both dtypes. float32 must match
to rounding; bfloat16 may not be worse than the reference's own bfloat16 rounding error.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from llm.kernels import flash_attention_gpu, flash_attention_tpu
from llm.kernels.flash_common import BlockSizes, flash_attention_reference
from tests.kernels.conftest import Case, make_inputs, out_and_grads

KERNELS = {
    # (module, two block shapes: square tiles, and forward/backward tiles that differ)
    "gpu": (flash_attention_gpu, [BlockSizes(16, 16, 16, 16), BlockSizes(32, 16, 16, 32)]),
    "tpu": (flash_attention_tpu, [BlockSizes(8, 128, 8, 128), BlockSizes(32, 128, 16, 128)]),
}

# Each fast case combines several features so the default run stays a handful of compiles
# (interpret mode costs ~5 s of XLA compile per case); SLOW_CASES widens the sweep.
CASES = [
    Case("mha_head64_uneven", L=45, S=45, H=64),
    Case("gqa2_packed_window", B=2, L=150, S=150, N=4, K=2, packed=True, window=9),
    Case(
        "mqa_alibi_softcap_bidirectional",
        L=33,
        S=33,
        N=4,
        K=1,
        causal=False,
        alibi=True,
        softcap=4.0,
    ),
    Case(
        "gqa3_decode_positions_orphans",
        L=8,
        S=150,
        N=6,
        K=2,
        decode_positions=True,
        orphan_queries=True,
        softcap=3.0,
    ),
]
SLOW_CASES = [
    Case(
        "orphan_rows_packed_alibi",
        B=2,
        L=48,
        S=48,
        N=2,
        K=1,
        packed=True,
        orphan_queries=True,
        alibi=True,
    ),
    Case(
        "packed_bidirectional_window_softcap",
        B=2,
        L=40,
        S=40,
        N=4,
        K=2,
        packed=True,
        causal=False,
        window=5,
        softcap=2.0,
    ),
]


def _check_f32(got, want):
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5, err_msg=name)


def _check_case(kernel: str, case: Case, blocks: BlockSizes) -> None:
    module = KERNELS[kernel][0]
    q, k, v, ids, slopes = make_inputs(case)
    got = out_and_grads(
        module.flash_attention, q, k, v, ids, slopes, case, block_sizes=blocks, interpret=True
    )
    want = out_and_grads(flash_attention_reference, q, k, v, ids, slopes, case)
    _check_f32(got, want)
    if case.orphan_queries:  # rows whose segment no key has: exactly zero, like the reference
        assert np.all(got[0][:, : case.L // 3] == 0.0)
        assert np.all(got[1][:, : case.L // 3] == 0.0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_kernel_matches_reference_f32(kernel, case):
    _check_case(kernel, case, KERNELS[kernel][1][CASES.index(case) % 2])


@pytest.mark.slow
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", SLOW_CASES, ids=lambda c: c.name)
def test_kernel_matches_reference_f32_wider(kernel, case):
    _check_case(kernel, case, KERNELS[kernel][1][SLOW_CASES.index(case) % 2])


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_bf16_no_worse_than_reference(kernel):
    """bf16 kernel error vs the f32 truth stays within 2x the bf16 reference's own error."""
    module, block_options = KERNELS[kernel]
    case = Case(
        "bf16_gqa_packed", B=1, L=64, S=64, N=4, K=2, packed=True, window=20, dtype="bfloat16"
    )
    q, k, v, ids, slopes = make_inputs(case)
    got = out_and_grads(
        module.flash_attention,
        q,
        k,
        v,
        ids,
        slopes,
        case,
        block_sizes=block_options[0],
        interpret=True,
    )
    ref_bf16 = out_and_grads(flash_attention_reference, q, k, v, ids, slopes, case)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    truth = out_and_grads(
        flash_attention_reference, *f32, ids, slopes, dataclasses.replace(case, dtype="float32")
    )
    for name, g, r, t in zip(("out", "dq", "dk", "dv"), got, ref_bf16, truth, strict=True):
        kernel_err = np.abs(g - t).max()
        ref_err = np.abs(r - t).max()
        assert kernel_err <= 2 * ref_err + 1e-3, (name, kernel_err, ref_err)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("H", [256])  # 64 runs in the fast sweep; all lower in test_lowering
def test_kernel_large_head_dims(kernel, H):
    module, block_options = KERNELS[kernel]
    case = Case(f"head{H}", L=20, S=20, N=2, K=1, H=H, packed=False, window=6, alibi=True)
    q, k, v, ids, slopes = make_inputs(case)
    got = out_and_grads(
        module.flash_attention,
        q,
        k,
        v,
        ids,
        slopes,
        case,
        block_sizes=block_options[1],
        interpret=True,
    )
    _check_f32(got, out_and_grads(flash_attention_reference, q, k, v, ids, slopes, case))


def test_default_block_sizes_are_valid_and_differ_per_backend():
    assert flash_attention_gpu.DEFAULT_BLOCKS != flash_attention_tpu.DEFAULT_BLOCKS
    assert flash_attention_tpu.DEFAULT_BLOCKS.block_k % 128 == 0
