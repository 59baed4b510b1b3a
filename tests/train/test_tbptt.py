"""Truncated BPTT: carried windows equal one long forward, gradients stop at the batch boundary,
the step carries each row's state (also over micro-batches), resume is bitwise."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_fixtures import tiny_config

from llm.checkpoint import Checkpointer
from llm.checkpoint.manager import CheckpointMismatch
from llm.model import init_params
from llm.sharding import make_mesh
from llm.sharding.init import make_plan
from llm.train import train
from llm.train.build import check_tbptt, state_layout
from llm.train.losses import make_loss
from llm.train.losses.causal_lm import StreamCausalLMLoss, initial_carry
from llm.train.optim import make_schedule
from llm.train.state import TrainState, init_state
from llm.train.step import make_train_step
from llm.train.trainable import Trainable

K, L = 3, 16  # windows, tokens per window
LSTM = ["model.arch=lstm", "data.order=streams", "train.tbptt=true"]
BOUNDARY = (16, 20)  # row b's second document starts here: a window boundary, mid-window


class _Jitted:
    """The loss with its plain and carried forms jitted (eager scans are slow on CPU)."""

    def __init__(self, loss: StreamCausalLMLoss):
        self.loss, self.plain = loss, jax.jit(loss.__call__)
        self.carried = jax.jit(loss.carried)

    def __call__(self, *args):
        return self.plain(*args)


def _setup(tmp_path, *extra):
    cfg = tiny_config(tmp_path / "run", *LSTM, *extra)
    params = init_params(cfg.model, jax.random.key(0))
    return cfg, {"model": params}, _Jitted(StreamCausalLMLoss.of(make_loss(cfg)))


def _sequence(B: int, seed: int = 0) -> dict[str, np.ndarray]:
    """[B, K L] rows of two documents each, split at BOUNDARY[b % 2]; `continues` unset."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 259, (B, K * L + 1)).astype(np.int32)
    t = np.arange(K * L)
    split_B1 = np.array([BOUNDARY[b % 2] for b in range(B)])[:, None]
    segments = np.where(t[None] < split_B1, 1, 2).astype(np.int32)
    mask = np.where(t[None] == split_B1 - 1, 0.0, 1.0).astype(np.float32)  # no cross-doc target
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "segment_ids": segments,
        "positions": np.zeros((B, K * L), np.int32),  # ignored by a recurrent model
        "loss_mask": mask,
    }


def _windows(seq: dict[str, np.ndarray]) -> list[dict[str, jax.Array]]:
    """The K windows of `seq`, with segment ids renumbered per window and `continues`."""
    out = []
    for k in range(K):
        w = {key: v[:, k * L : (k + 1) * L] for key, v in seq.items()}
        w["segment_ids"] = w["segment_ids"] - w["segment_ids"][:, :1] + 1
        if k == 0:
            continues = np.zeros(len(w["inputs"]), np.float32)
        else:  # the row's first token is in the same document as the previous token
            seg = seq["segment_ids"]
            continues = (seg[:, k * L] == seg[:, k * L - 1]).astype(np.float32)
        out.append({key: jnp.asarray(v) for key, v in {**w, "continues": continues}.items()})
    return out


def _full(seq):
    """The whole [B, K L] sequence as one batch (every row from a zero state)."""
    batch = {**seq, "continues": np.zeros(len(seq["inputs"]), np.float32)}
    return {k: jnp.asarray(v) for k, v in batch.items()}


def test_carried_windows_equal_one_long_forward(tmp_path):
    cfg, params, loss = _setup(tmp_path, "model.max_seq_len=64")
    seq = _sequence(B=2)
    carry, total, weight = initial_carry(cfg.model, 2), 0.0, 0.0
    windows = _windows(seq)  # row 0's second document starts at a window boundary
    assert [w["continues"].tolist() for w in windows] == [[0, 0], [0, 1], [1, 1]]
    for w in windows:
        out, carry = loss.carried(params, {}, w, None, carry)
        total, weight = total + out.total, weight + out.weight
    # the whole sequence from a zero state (continues 0), as one batch without windows
    whole, final = loss.carried(params, {}, _full(seq), None, initial_carry(cfg.model, 2))
    assert float(weight) == float(whole.weight) == 2 * K * L - 2
    np.testing.assert_allclose(float(total), float(whole.total), rtol=1e-5)
    for key in ("h_YBH", "c_YBH"):  # the carried state is the long run's final state
        np.testing.assert_allclose(carry[key], final[key], rtol=1e-5, atol=1e-6)
    # without the carry the windows score differently (the property above is not vacuous)
    zero = initial_carry(cfg.model, 2)
    cold = sum(float(loss.carried(params, {}, w, None, zero)[0].total) for w in windows)
    assert abs(cold - float(whole.total)) > 1e-2


def test_gradient_of_a_window_ignores_earlier_windows(tmp_path):
    cfg, params, loss = _setup(tmp_path)
    w0, w1, _ = _windows(_sequence(B=2, seed=1))
    c0 = initial_carry(cfg.model, 2)
    c1 = loss.carried(params, {}, w0, None, c0)[1]

    def through(p):  # the state fed to window 1 is itself a function of p
        return loss.carried(p, {}, w1, None, loss.carried(p, {}, w0, None, c0)[1])[0].total

    def fixed(p):
        return loss.carried(p, {}, w1, None, c1)[0].total

    g_through, g_fixed = jax.jit(jax.grad(through))(params), jax.jit(jax.grad(fixed))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 g_through, g_fixed)  # fmt: skip
    # not vacuous: window 1's loss depends on the state it is handed (row 1 continues), so
    # without the stop at the boundary `through` would add d loss / d state * d state / d p
    nudged = {**c1, "h_YBH": c1["h_YBH"] + 0.1}
    change = loss.carried(params, {}, w1, None, nudged)[0].total - fixed(params)
    assert abs(float(change)) > 1e-3


def _stepper(cfg, loss):
    """(run windows -> final state) of the jitted train step under `cfg` (compiled once)."""
    tx = optax.sgd(0.5)  # linear in the gradients: accumulation order cannot flip an update
    step = make_train_step(cfg, loss.carried, tx, make_schedule(cfg.optim, cfg.train.steps))

    def run(params, windows):
        params = jax.tree.map(jnp.copy, params)  # the step donates the state
        state = init_state(params, tx, seed=0, carry=initial_carry(cfg.model, 4))
        for w in windows:
            state, _ = step(state, w)
        return state

    return run, step


def test_step_carries_state_and_micro_batches_keep_their_rows(tmp_path):
    shape = ("train.batch_size=4", "model.n_layers=1")
    cfg, params, loss = _setup(tmp_path, *shape)
    windows = _windows(_sequence(B=4, seed=2))
    run, step = _stepper(cfg, loss)
    whole = run(params, windows)
    accum = tiny_config(tmp_path / "run", *LSTM, *shape, "train.grad_accum=2")
    split = _stepper(accum, loss)[0](params, windows)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(split), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the step hands each row's state on: tokens since the stream's state was last zeroed
    # (row 0's document restarts at window 1), and an LSTM's cell state
    assert whole.carry["lengths_B"].tolist() == [2 * L, 3 * L, 2 * L, 3 * L]
    assert (
        whole.carry["c_YBH"].shape == (1, 4, 32) and float(jnp.abs(whole.carry["c_YBH"]).min()) > 0
    )
    plain = init_state(jax.tree.map(jnp.copy, params), optax.sgd(0.5), seed=0)
    with pytest.raises(ValueError, match="lacks a carried recurrent state"):
        step(plain, windows[0])  # no carry in the state: refused under tbptt


def _corpus(folder: Path, n_docs: int = 12) -> Path:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    folder.mkdir(parents=True)
    for i in range(n_docs):
        text = " ".join(rng.choice(words, size=int(rng.integers(40, 160))))
        (folder / f"doc{i:02d}.txt").write_text(text + "\n")
    return folder


def _run_cfg(run_dir, corpus, cache, steps):
    return tiny_config(run_dir, *LSTM, f"data.corpus={corpus}", f"data.cache_dir={cache}",
                       "data.eval_corpus=null", "data.min_chars=1", "data.val_fraction=0.2",
                       "data.near_dup_threshold=null", f"train.steps={steps}",
                       "train.ckpt_every=3", "train.async_checkpointing=false")  # fmt: skip


@pytest.mark.slow  # three small training runs in one process (~1.5 min on a loaded VM)
def test_tbptt_run_resumed_equals_uninterrupted_run_bitwise(tmp_path):
    corpus, cache = _corpus(tmp_path / "corpus"), tmp_path / "cache"
    straight = train(_run_cfg(tmp_path / "straight", corpus, cache, 6))
    first = train(_run_cfg(tmp_path / "split", corpus, cache, 3))
    assert float(jnp.abs(first["state"].carry["h_YBH"]).sum()) > 0  # a state was carried
    resumed = train(_run_cfg(tmp_path / "split", corpus, cache, 6))
    assert resumed["resumed_from"] == 3
    want, got = straight["state"].to_dict(), resumed["state"].to_dict()
    assert set(want) == set(got) and "carry" in got
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a tbptt checkpoint does not restore into a run without it: the carry is named
    cfg = tiny_config(tmp_path / "x", "model.arch=lstm", f"data.corpus={corpus}")
    like = state_layout(cfg, make_plan(cfg, make_mesh(cfg.mesh)), Trainable()).abstract_sharded()
    ckpt = Checkpointer(tmp_path / "split", keep=10)
    with pytest.raises(
        CheckpointMismatch, match=r"carry\.h_YBH: in checkpoint but not in the model"
    ):
        ckpt.restore(like, step=6)
    ckpt.close()


def test_state_without_tbptt_is_unchanged():
    state = init_state({"w": jnp.ones(2)}, optax.sgd(0.1), seed=0)
    fields = ["frozen", "good_steps", "loss_scale", "opt_state", "params", "rng", "skipped",
              "spike_hist_W2", "spike_seen", "step"]  # fmt: skip
    assert sorted(state.to_dict()) == fields  # what checkpoints held before the carry existed
    assert TrainState.from_dict(state.to_dict()).carry == {}


def test_tbptt_needs_streams_and_a_recurrent_model(tmp_path):
    with pytest.raises(ValueError, match=r"data\.order=streams"):
        check_tbptt(tiny_config(tmp_path, "model.arch=lstm", "train.tbptt=true"))
    with pytest.raises(ValueError, match="rnn, lstm or gru"):
        check_tbptt(tiny_config(tmp_path, "data.order=streams", "train.tbptt=true"))
    bidi = tiny_config(tmp_path, *LSTM, "model.rnn_bidirectional=true")
    with pytest.raises(ValueError, match="unidirectional"):
        check_tbptt(bidi)
    cfg = tiny_config(tmp_path, *LSTM, "loss.name=sft")
    with pytest.raises(ValueError, match=r"loss\.name=causal_lm"):
        StreamCausalLMLoss.of(make_loss(cfg))
