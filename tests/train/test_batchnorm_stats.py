"""PreciseBN in training (llm/train/batchnorm_stats.py): the optimiser never moves the stored
BatchNorm statistics, and `llm train` with `model.norm=batchnorm` evaluates."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.cli import main
from llm.config import ModelConfig, OptimConfig, load_config
from llm.model import forward, init_params, logical_axes
from llm.train import train
from llm.train.optim import make_optimizer
from tests.train.train_fixtures import TINY

CFG = ModelConfig(vocab_size=61, d_model=32, n_layers=1, n_heads=4, d_ff=48, max_seq_len=16,
                  norm="batchnorm", norm_bias=True)  # fmt: skip
STATS = ("mean", "var")


def _stat_leaves(params):
    """The (path, leaf) of every BatchNorm mean / var, and of every scale (which must move)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    named = [("/".join(str(k.key) for k in path), leaf) for path, leaf in flat]
    stats = [(n, a) for n, a in named if n.rsplit("/", 1)[-1] in STATS]
    scales = [(n, a) for n, a in named if n.endswith("norm/scale")]
    return stats, scales


@pytest.mark.parametrize("name", ["adamw", "lion", "sgd", "adafactor", "muon"])
def test_optimizer_leaves_the_statistics_exactly_unchanged(name):
    """The training forward never reads mean / var, so their gradient is exactly zero and
    three real steps (weight decay on, warmup off) leave them bit-identical while every
    norm scale moves."""
    params = jax.tree.map(lambda a: a + 0.5, init_params(CFG, jax.random.key(0)))  # off init
    opt = OptimConfig(name=name, lr=1e-2, warmup_steps=0, weight_decay=0.1)
    tx = make_optimizer(opt, total_steps=10, params=params, axes=logical_axes(CFG))
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 61)

    def loss(p, key):
        out = forward(CFG, p, tokens, dropout_key=key)
        return jax.nn.logsumexp(out.logits_BLV, -1).mean() - out.logits_BLV[..., 3].mean()

    @jax.jit
    def step(p, state, key):
        grads = jax.grad(loss)(p, key)
        updates, state = tx.update(grads, state, p)
        return jax.tree.map(jnp.add, p, updates), state, grads

    new, state = params, tx.init(params)
    for i in range(3):
        new, state, grads = step(new, state, jax.random.key(i))
        stat_grads, scale_grads = _stat_leaves(grads)
        for path, g in stat_grads:
            assert not np.any(np.asarray(g)), path
        for path, g in scale_grads:  # the loss does reach every norm
            assert np.any(np.asarray(g)), path
    (before, scales0), (after, scales1) = _stat_leaves(params), _stat_leaves(new)
    assert len(before) == 2 * 3  # attn_norm, mlp_norm, final_norm
    for (path, a), (_, b) in zip(before, after, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)
    moved = [
        np.any(np.asarray(a) != np.asarray(b))
        for (_, a), (_, b) in zip(scales0, scales1, strict=True)
    ]
    assert any(moved)  # the optimiser did step (a tiny SGD step may round away on some)


@pytest.mark.slow  # 4 steps, two calibrations and evaluations; cold: ~30-60 s on 2 busy cores
def test_train_with_batchnorm_evaluates_and_saves_calibrated_statistics(tmp_path, capsys):
    """Calibrated before the step-2 evaluation and once before the final checkpoint (whose
    evaluation reuses it); the returned state and the checkpoint carry the statistics."""
    overrides = ["model.norm=batchnorm", "model.n_layers=1", "train.steps=4",
                 "model.batchnorm_calibration_batches=2", "train.eval_every=2", "eval.batches=1",
                 "train.ckpt_every=0", "train.async_checkpointing=false"]  # fmt: skip
    cfg = load_config(None, [*TINY, *overrides, f"train.run_dir={tmp_path}"])
    out = train(cfg)
    assert math.isfinite(out["val"]["bpb"]) and out["val"]["bpb"] > 0
    model = out["state"].params["model"]
    for norm in (model["final_norm"], model["blocks"]["attn_norm"]):
        assert not np.allclose(np.asarray(norm["var"]), 1.0)  # calibrated, not the init
    err = capsys.readouterr().err
    for step in (2, 4):
        assert err.count(f"step {step}: BatchNorm statistics pooled over 2 training") == 1, err
    # the checkpoint carries the statistics: `llm eval` scores it as the run did, and decodes
    assert main(["eval", "--checkpoint", str(tmp_path), "--samples", "1"]) == 0
    assert f"{out['val']['loss']:.4f}" in capsys.readouterr().out


def test_calibration_under_partial_freeze_runs_the_merged_model():
    """train.freeze of the embedding: calibration runs the whole decoder (trainable + frozen
    merged) and writes exactly the statistics of the full-tree `calibrate` into the trainable
    tree; the frozen tree is untouched."""
    import dataclasses

    from llm.model.precise_bn import calibrate
    from llm.train.batchnorm_stats import calibrate_state

    cfg = load_config(None, [*TINY, "model.norm=batchnorm", "model.n_layers=1"])
    full = init_params(cfg.model, jax.random.key(0))
    trainable = {k: v for k, v in full.items() if k != "token_embed"}
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (2, 8), 0, 259), np.int32)
    batches = [{"inputs": tokens}]
    state = dataclasses.make_dataclass("S", ["params", "frozen"])(
        {"model": trainable}, {"model": {"token_embed": full["token_embed"]}}
    )
    new = calibrate_state(cfg, state, batches, lambda b: {k: jnp.asarray(v) for k, v in b.items()})
    want = calibrate(cfg.model, full, batches)
    assert set(new.params["model"]) == set(trainable) and new.frozen is state.frozen
    got_stats, _ = _stat_leaves(new.params["model"])
    want_stats, _ = _stat_leaves({k: v for k, v in want.items() if k != "token_embed"})
    assert len(got_stats) == 2 * 3
    for (path, a), (_, b) in zip(got_stats, want_stats, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)
    assert not np.allclose(np.asarray(new.params["model"]["final_norm"]["var"]), 1.0)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["loss.name=dpo", "data.format=preference"], "model.norm"),
        (["model.prefix_lm=true", "loss.name=sft"], "model.prefix_lm"),
        (["train.qat.fmt=int8"], "train.qat.fmt"),
    ],
)
def test_batchnorm_runs_that_calibration_cannot_serve_are_refused(overrides, key):
    """Pair batches, a prefix-LM and QAT are refused by name before any training."""
    from llm.config.base import ConfigError
    from llm.train.batchnorm_stats import check_batchnorm_run
    from llm.train.losses import make_loss

    cfg = load_config(None, [*TINY, "model.norm=batchnorm", *overrides])
    with pytest.raises(ConfigError, match=re.escape(key)):
        check_batchnorm_run(cfg, make_loss(cfg))
    plain = load_config(None, [*TINY, *overrides])  # the same run without BatchNorm passes
    check_batchnorm_run(plain, make_loss(plain))
