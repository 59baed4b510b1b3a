"""Recurrent cells with torch's equations, and the scan that runs one layer over time.

Letters (beside llm/typing.py's): Z directions (1, or 2 when bidirectional: forward then
backward, torch's order), G gates of a cell, H hidden width (= d_model), I a layer's input
width (d_model for layer 0, Z * H above), K the hidden width read by the recurrent matmul.

Cells (each `h_t` from the input projection `xp = x W_ih^T + b_ih` and the recurrent one
`hp = h W_hh^T + b_hh`, split into G gate slices of width H, in torch's gate order):
* rnn (Elman, 1990), G=1:  h' = tanh(xp + hp).
* lstm (Hochreiter & Schmidhuber, 1997; forget gate: Gers et al., 2000), G=4, gates i,f,g,o:
  c' = sigmoid(f) * c + sigmoid(i) * tanh(g);  h' = sigmoid(o) * tanh(c').
* gru (Cho et al., 2014, arXiv:1406.1078), G=3, gates r,z,n, with torch's (and cuDNN's)
  reset gate applied after the recurrent matmul:
  r = sigmoid(xp_r + hp_r);  z = sigmoid(xp_z + hp_z);  n = tanh(xp_n + r * hp_n);
  h' = (1 - z) * n + z * h.  (Cho et al. put r before the matmul; the two differ.)

Weight layout and the mapping from torch (`nn.RNN/LSTM/GRU`, layer k, direction z;
`torch_to_ours` below does it): torch `weight_ih_l{k}[_reverse]` [G*H, I] is our
`w_ih[I, z, G, H]` = `weight.reshape(G, H, I).transpose(2, 0, 1)`; `weight_hh` [G*H, H]
likewise gives `w_hh[K, z, G, H]`; the biases [G*H] give `b[z, G, H]`. The input axis comes
first so each matmul contracts a leading axis of the weight.

Initialisation is torch's: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H)).

Numerics: the recurrent state and the gate arithmetic are float32 at least, whatever `model.dtype`
(an LSTM cell state summed over thousands of steps loses too much in bfloat16); the matmul
operands are cast to `model.dtype` and accumulate in the state's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from llm.typing import Array

GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # G per cell kind, in torch's gate order


def state_dtype(dtype) -> jnp.dtype:
    """The dtype of the recurrent state and gate arithmetic: float32, or wider if `dtype` is
    (float64 under `jax.enable_x64`, for finite-difference checks)."""
    return jnp.promote_types(dtype, jnp.float32)


def uniform_init(hidden: int) -> Callable:
    """torch's RNN initialiser: U(-1/sqrt(hidden), 1/sqrt(hidden)) for weights and biases."""
    bound = 1.0 / math.sqrt(hidden)

    def init(key: Array, shape: tuple[int, ...], dtype) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def rnn_cell(xp_ZBGH: Array, hp_ZBGH: Array, h_ZBH: Array, c_ZBH: None) -> tuple[Array, None]:
    return jnp.tanh(xp_ZBGH[..., 0, :] + hp_ZBGH[..., 0, :]), None


def lstm_cell(xp_ZBGH: Array, hp_ZBGH: Array, h_ZBH: Array, c_ZBH: Array) -> tuple[Array, Array]:
    g_ZBGH = xp_ZBGH + hp_ZBGH
    i, f, g, o = (g_ZBGH[..., k, :] for k in range(4))
    c_ZBH = jax.nn.sigmoid(f) * c_ZBH + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c_ZBH), c_ZBH


def gru_cell(xp_ZBGH: Array, hp_ZBGH: Array, h_ZBH: Array, c_ZBH: None) -> tuple[Array, None]:
    r = jax.nn.sigmoid(xp_ZBGH[..., 0, :] + hp_ZBGH[..., 0, :])
    z = jax.nn.sigmoid(xp_ZBGH[..., 1, :] + hp_ZBGH[..., 1, :])
    n = jnp.tanh(xp_ZBGH[..., 2, :] + r * hp_ZBGH[..., 2, :])
    return (1.0 - z) * n + z * h_ZBH, None


CELLS = {"rnn": rnn_cell, "lstm": lstm_cell, "gru": gru_cell}


def step_masks(segment_ids_BL: Array) -> tuple[Array, Array]:
    """(reset_BL, valid_BL): valid = not padding (segment id 0); reset = a valid token whose
    segment id differs from that of the row's previous valid token in this call, where the
    state restarts from zero. The first valid token of a call never resets: it continues
    the state the call starts from (a cache's), which the caller zeroes for a new document."""
    B, L = segment_ids_BL.shape
    valid_BL = segment_ids_BL != 0
    index_BL = jnp.where(valid_BL, jnp.arange(L, dtype=jnp.int32)[None], -1)
    last_BL = jax.lax.cummax(index_BL, axis=1)  # the latest valid position at or before t
    before_BL = jnp.concatenate([jnp.full((B, 1), -1, jnp.int32), last_BL[:, :-1]], axis=1)
    prev_BL = jnp.take_along_axis(segment_ids_BL, jnp.maximum(before_BL, 0), axis=1)
    prev_BL = jnp.where(before_BL >= 0, prev_BL, 0)
    reset_BL = valid_BL & (prev_BL != 0) & (segment_ids_BL != prev_BL)
    return reset_BL, valid_BL


def project(x_Z_K: Array, w_KZGH: Array, acc) -> Array:
    """[Z, ..., G, H]: each direction's x [..., K] times its weight [K, G, H], as one 2-D
    matmul per direction ([M, K] @ [K, G*H]) accumulating in `acc`: XLA:CPU runs the
    gradients of the batched einsum "Z...K,KZGH" as slower multi-axis contractions (as
    `llm.model.layers.Linear` notes)."""
    K, Z, G, H = w_KZGH.shape
    lead = x_Z_K.shape[1:-1]
    outs = [
        jnp.matmul(x_Z_K[z].reshape(-1, K), w_KZGH[:, z].reshape(K, G * H),
                   preferred_element_type=acc).reshape(*lead, G, H)
        for z in range(Z)
    ]  # fmt: skip
    return jnp.stack(outs)


def run_layer(
    kind: str,
    xp_ZBLGH: Array,
    w_hh_KZGH: Array,
    b_hh_ZGH: Array,
    state: tuple[Array, Array | None],
    masks: tuple[Array, Array],
    dtype,
) -> tuple[Array, tuple[Array, Array | None]]:
    """One layer over time (`lax.scan` over L, every direction at once).

    xp_ZBLGH: the input projection of all timesteps (one matmul before the scan, so the
    scan holds only the recurrent matmul); each direction's sequence is already in its own
    reading order. state: (h_ZBH, c_ZBH or None) at the start, in `state_dtype(dtype)`.
    masks: (reset_ZBL, valid_ZBL) from `step_masks`: a reset zeroes the state before the
    step, a padding step leaves it unchanged. Returns (outputs_ZBLH, final state); a padding
    step outputs the unchanged state.
    """
    acc = state_dtype(dtype)
    cell, b_hh_ZGH = CELLS[kind], b_hh_ZGH.astype(acc)
    w_hh_KZGH = w_hh_KZGH.astype(dtype)

    def step(carry, inputs):
        h_ZBH, c_ZBH = carry
        xp_ZBGH, reset_ZB, valid_ZB = inputs
        keep_ZB1, valid_ZB1 = ~reset_ZB[..., None], valid_ZB[..., None]
        h_ZBH = jnp.where(keep_ZB1, h_ZBH, 0.0)
        c_ZBH = None if c_ZBH is None else jnp.where(keep_ZB1, c_ZBH, 0.0)
        hp_ZBGH = project(h_ZBH.astype(dtype), w_hh_KZGH, acc)
        h_new, c_new = cell(xp_ZBGH.astype(acc), hp_ZBGH + b_hh_ZGH[:, None], h_ZBH, c_ZBH)
        h_ZBH = jnp.where(valid_ZB1, h_new, h_ZBH)
        c_ZBH = None if c_ZBH is None else jnp.where(valid_ZB1, c_new, c_ZBH)
        return (h_ZBH, c_ZBH), h_ZBH

    reset_ZBL, valid_ZBL = masks
    xs = (
        jnp.moveaxis(xp_ZBLGH, 2, 0),
        jnp.moveaxis(reset_ZBL, 2, 0),
        jnp.moveaxis(valid_ZBL, 2, 0),
    )
    final, out_LZBH = jax.lax.scan(step, state, xs)
    return jnp.moveaxis(out_LZBH, 0, 2), final


def torch_to_ours(weight_ih, weight_hh, bias_ih, bias_hh, gates: int) -> dict[str, np.ndarray]:
    """One torch layer-direction's weights (arrays) in our layout, without the layer and
    direction axes: w_ih [I, G, H], w_hh [H, G, H], b_ih / b_hh [G, H]."""
    weight_ih, weight_hh = np.asarray(weight_ih), np.asarray(weight_hh)
    H = weight_hh.shape[1]

    def weight(w):
        return w.reshape(gates, H, w.shape[1]).transpose(2, 0, 1)

    return {
        "w_ih": weight(weight_ih),
        "w_hh": weight(weight_hh),
        "b_ih": np.asarray(bias_ih).reshape(gates, H),
        "b_hh": np.asarray(bias_hh).reshape(gates, H),
    }
