"""Mamba's sequence mixing as functions: the segment-aware causal depthwise convolution and the
selective state-space scan, each with a plain reference beside the fast path.

The selective SSM (Gu & Dao, 2023, arXiv:2312.00752, Algorithm 2) discretises, per token t,
inner channel e and state index n, with zero-order hold on A and Euler on B (the paper's
simplification, as in its reference code):

    a_t = exp(dt_t A)      b_t = dt_t B_t u_t      h_t = a_t * h_{t-1} + b_t
    y_t = C_t . h_t + D u_t

h_t = a_t h_{t-1} + b_t is a first-order linear recurrence, so it is a prefix "sum" under the
associative operator (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2) (Blelloch, 1990, "Prefix sums
and their applications"; Martin & Cundy, 2018, arXiv:1709.04057): `scan_parallel` runs it with
`jax.lax.associative_scan`, O(log L) depth, which is what training uses; `scan_sequential`
is the O(L)-step `lax.scan` reference and decoding's natural form.

Packed rows and padding (segment ids, as everywhere in llm): a token whose segment id differs
from the previous token's starts a document, so its a_t is 0 (the state restarts) and the
convolution does not look past its first token; padding (segment id 0) leaves the state
unchanged (a_t = 1, b_t = 0) and is never inside a real token's window; the window a step
leaves behind ends at its last valid token, so padding may sit on either side.

Letters: B batch, L length, E inner channels, N state size, K conv width, W = K - 1 cached
conv inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llm.typing import Array


def scan_sequential(a_BLEN: Array, b_BLEN: Array, h0_BEN: Array) -> tuple[Array, Array]:
    """(h_BLEN every state, h_BEN the last) of h_t = a_t h_{t-1} + b_t from h0, one step at a
    time: the reference."""

    def step(h_BEN, ab):
        a_BEN, b_BEN = ab
        h_BEN = a_BEN * h_BEN + b_BEN
        return h_BEN, h_BEN

    last_BEN, h_LBEN = jax.lax.scan(step, h0_BEN, (jnp.moveaxis(a_BLEN, 1, 0),
                                                   jnp.moveaxis(b_BLEN, 1, 0)))  # fmt: skip
    return jnp.moveaxis(h_LBEN, 0, 1), last_BEN


def scan_parallel(a_BLEN: Array, b_BLEN: Array, h0_BEN: Array) -> tuple[Array, Array]:
    """`scan_sequential` as an associative scan over time (h0 folded into the first b)."""
    b_BLEN = b_BLEN.at[:, 0].add(a_BLEN[:, 0] * h0_BEN)

    def combine(left, right):
        a_l, b_l = left
        a_r, b_r = right
        return a_l * a_r, a_r * b_l + b_r

    _, h_BLEN = jax.lax.associative_scan(combine, (a_BLEN, b_BLEN), axis=1)
    return h_BLEN, h_BLEN[:, -1]


SCANS = {"parallel": scan_parallel, "sequential": scan_sequential}


def boundaries(segment_ids_BL: Array) -> tuple[Array, Array, Array]:
    """(reset_BL: token starts a new document after the first position, valid_BL: not
    padding, doc_BL: document index within the row, 0 for the first one)."""
    seg = segment_ids_BL
    reset_BL = jnp.zeros_like(seg, bool).at[:, 1:].set(seg[:, 1:] != seg[:, :-1])
    return reset_BL, seg != 0, jnp.cumsum(reset_BL, axis=1, dtype=jnp.int32)


def selective_ssm(
    u_BLE: Array,
    dt_BLE: Array,
    A_EN: Array,
    B_BLN: Array,
    C_BLN: Array,
    D_E: Array,
    segment_ids_BL: Array,
    h0_BEN: Array,
    scan: str = "parallel",
) -> tuple[Array, Array]:
    """(y_BLE, the state after the last valid token h_BEN), float32. `dt_BLE` is the step
    size after softplus; `A_EN` is negative (-exp(A_log)); `h0_BEN` the state before the
    first token (zeros, or a decode cache's)."""
    reset_BL, valid_BL, _ = boundaries(segment_ids_BL)
    f32 = jnp.float32
    u_BLE, dt_BLE = u_BLE.astype(f32), dt_BLE.astype(f32)
    a_BLEN = jnp.exp(dt_BLE[..., None] * A_EN.astype(f32))
    b_BLEN = (dt_BLE * u_BLE)[..., None] * B_BLN.astype(f32)[:, :, None, :]
    a_BLEN = jnp.where(reset_BL[:, :, None, None], 0.0, a_BLEN)
    a_BLEN = jnp.where(valid_BL[:, :, None, None], a_BLEN, 1.0)
    b_BLEN = jnp.where(valid_BL[:, :, None, None], b_BLEN, 0.0)
    h_BLEN, last_BEN = SCANS[scan](a_BLEN, b_BLEN, h0_BEN.astype(f32))
    y_BLE = jnp.einsum("BLEN,BLN->BLE", h_BLEN, C_BLN.astype(f32))
    return y_BLE + D_E.astype(f32) * u_BLE, last_BEN


def causal_conv(
    x_BLE: Array, w_KE: Array, bias_E: Array, window_BWE: Array, segment_ids_BL: Array
) -> tuple[Array, Array]:
    """(y_BLE, the window after the step): depthwise causal convolution y_t = bias +
    sum_k w_k x_{t-K+1+k} (torch's Conv1d with K-1 zeros of left padding, groups = channels),
    where the W = K-1 inputs before the first token come from `window_BWE` (zeros, or a
    decode cache's) and inputs of another document count as zero. The returned window holds
    the last W inputs up to the row's last valid token (of its document; zeros before it)."""
    B, L, E = x_BLE.shape
    K, W = w_KE.shape[0], window_BWE.shape[1]
    _, valid_BL, doc_BL = boundaries(segment_ids_BL)
    xe_BTE = jnp.concatenate([window_BWE.astype(x_BLE.dtype), x_BLE], axis=1)  # T = W + L
    doc_BT = jnp.concatenate([jnp.zeros((B, W), jnp.int32), doc_BL], axis=1)
    y_BLE = jnp.broadcast_to(bias_E.astype(x_BLE.dtype), (B, L, E))
    for k in range(K):  # tap k reads the input K-1-k tokens back
        same_BL = doc_BT[:, k : k + L] == doc_BL
        y_BLE = y_BLE + jnp.where(same_BL[..., None], xe_BTE[:, k : k + L] * w_KE[k], 0)
    if W == 0:  # a width-1 convolution keeps no window
        return y_BLE, window_BWE
    # the window ends at the row's last valid token, wherever the padding is (a row with no
    # valid token keeps its window: end 0 takes the old one back)
    last_B = L - 1 - jnp.argmax(valid_BL[:, ::-1], axis=-1)
    end_B = jnp.where(valid_BL.any(-1), last_B + 1, 0)
    last_doc_B = jnp.take_along_axis(doc_BT, (end_B + W - 1)[:, None], axis=1)
    take = jax.vmap(lambda a, start: jax.lax.dynamic_slice_in_dim(a, start, W, axis=0))
    window_BWE, wdoc_BW = take(xe_BTE, end_B), take(doc_BT, end_B)
    window_BWE = jnp.where((wdoc_BW == last_doc_B)[..., None], window_BWE, 0)
    return y_BLE, window_BWE


def causal_conv_reference(x_BLE: Array, w_KE: Array, bias_E: Array) -> Array:
    """`causal_conv` of one document from an empty window, as a padded 1-D convolution."""
    K = w_KE.shape[0]
    rhs_KIE = w_KE[:, None, :]  # [width, in-features per group = 1, out channels]
    y_BLE = jax.lax.conv_general_dilated(
        x_BLE, rhs_KIE, window_strides=(1,), padding=[(K - 1, 0)],
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=x_BLE.shape[-1],
    )  # fmt: skip
    return y_BLE + bias_E
