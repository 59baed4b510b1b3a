"""The recurrent cells against torch's cells, the packed-row masks, and torch's initialiser.

Reference: `torch.nn.RNNCell` / `LSTMCell` / `GRUCell` with the same weights copied through
`torch_to_ours` (so a wrong gate order or transpose fails), float32, tolerance 1e-5.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from llm.model.rnn_cells import (
    CELLS,
    GATES,
    run_layer,
    step_masks,
    torch_to_ours,
    uniform_init,
)

H, IN, B = 5, 3, 4
TORCH_CELLS = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}


def _torch_cell(kind: str):
    torch.manual_seed(0)
    cell = TORCH_CELLS[kind](IN, H)
    weights = {k: v.detach().numpy() for k, v in cell.state_dict().items()}
    ours = torch_to_ours(*(weights[n] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
                         GATES[kind])  # fmt: skip
    return cell, ours


def _one_step(kind: str, ours: dict, x_BI, h_BH, c_BH):
    """One step through `run_layer` (Z = 1, L = 1), the path the model takes."""
    xp = jnp.einsum("BI,IGH->BGH", x_BI, ours["w_ih"]) + ours["b_ih"]
    state = (h_BH[None], None if c_BH is None else c_BH[None])
    no_reset, valid = jnp.zeros((1, B, 1), bool), jnp.ones((1, B, 1), bool)
    out, (h, c) = run_layer(kind, xp[None, :, None], ours["w_hh"][:, None], ours["b_hh"][None],
                            state, (no_reset, valid), jnp.float32)  # fmt: skip
    np.testing.assert_array_equal(out[0, :, 0], h[0])  # the output is the new state
    return h[0], None if c is None else c[0]


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_cell_step_equals_torch(kind):
    cell, ours = _torch_cell(kind)
    rng = np.random.default_rng(1)
    x, h, c = (rng.normal(size=s).astype(np.float32) for s in ((B, IN), (B, H), (B, H)))
    if kind == "lstm":
        want = cell(torch.tensor(x), (torch.tensor(h), torch.tensor(c)))
        want_h, want_c = (t.detach().numpy() for t in want)
        got_h, got_c = _one_step(kind, ours, x, h, c)
        np.testing.assert_allclose(got_c, want_c, atol=1e-5)
    else:
        want_h = cell(torch.tensor(x), torch.tensor(h)).detach().numpy()
        got_h, _ = _one_step(kind, ours, x, h, None)
    np.testing.assert_allclose(got_h, want_h, atol=1e-5)


def test_torch_layout_mapping_is_gate_major():
    """torch stacks gates along rows: weight[g * H + j, i] is our w[i, g, j]."""
    G = 4
    weight_ih = np.arange(G * H * IN, dtype=np.float32).reshape(G * H, IN)
    weight_hh = np.arange(G * H * H, dtype=np.float32).reshape(G * H, H)
    bias = np.arange(G * H, dtype=np.float32)
    ours = torch_to_ours(weight_ih, weight_hh, bias, -bias, G)
    assert ours["w_ih"].shape == (IN, G, H) and ours["w_hh"].shape == (H, G, H)
    assert ours["w_ih"][2, 3, 1] == weight_ih[3 * H + 1, 2]
    assert ours["w_hh"][4, 1, 0] == weight_hh[1 * H + 0, 4]
    assert ours["b_hh"][2, 3] == -bias[2 * H + 3]


def test_step_masks_golden():
    """Hand-worked: a new segment id resets; padding is invalid and never resets; the first
    valid token of a call (continuing a cache) never resets, even after padding."""
    seg = jnp.asarray([[1, 1, 2, 2, 0, 0], [0, 3, 0, 3, 4, 0], [5, 0, 6, 6, 6, 7]])
    reset, valid = step_masks(seg)
    np.testing.assert_array_equal(valid, seg != 0)
    want = [[0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0], [0, 0, 1, 0, 0, 1]]
    np.testing.assert_array_equal(reset, np.asarray(want, bool))


def test_run_layer_reset_and_padding():
    """A reset step equals a step from zero; a padding step keeps the state exactly."""
    _, ours = _torch_cell("lstm")
    rng = np.random.default_rng(2)
    xp = jnp.asarray(rng.normal(size=(1, 1, 3, 4, H)), jnp.float32)
    h0 = jnp.asarray(rng.normal(size=(1, 1, H)), jnp.float32)
    c0 = jnp.asarray(rng.normal(size=(1, 1, H)), jnp.float32)
    w_hh, b_hh = ours["w_hh"][:, None], ours["b_hh"][None]
    reset = jnp.asarray([[[False, False, True]]])
    valid = jnp.asarray([[[True, False, True]]])
    out, _ = run_layer("lstm", xp, w_hh, b_hh, (h0, c0), (reset, valid), jnp.float32)
    np.testing.assert_array_equal(out[0, 0, 1], out[0, 0, 0])  # padding: state kept
    zero = jnp.zeros_like(h0)
    fresh, _ = run_layer("lstm", xp[:, :, 2:], w_hh, b_hh, (zero, zero),
                         (reset[..., 2:] & False, valid[..., 2:]), jnp.float32)  # fmt: skip
    np.testing.assert_allclose(out[0, 0, 2], fresh[0, 0, 0], atol=1e-6)
    assert not np.allclose(out[0, 0, 2], out[0, 0, 0])


def test_uniform_init_is_torch_bound():
    """U(-1/sqrt(H), 1/sqrt(H)): every draw inside the bound, the extremes near it, and the
    variance that of a uniform (bound^2 / 3)."""
    hidden = 16
    bound = 1 / math.sqrt(hidden)
    w = np.asarray(uniform_init(hidden)(jax.random.key(0), (20000,), jnp.float32))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert w.min() < -0.99 * bound
    np.testing.assert_allclose(w.var(), bound**2 / 3, rtol=0.05)


def test_cells_registry_matches_gate_counts():
    assert set(CELLS) == set(GATES) == {"rnn", "lstm", "gru"}
    assert GATES == {"rnn": 1, "lstm": 4, "gru": 3}  # torch's chunk counts
