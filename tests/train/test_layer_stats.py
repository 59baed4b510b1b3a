"""Per-layer gradient norms and activation RMS: the functions and `train.layer_stats`."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import SyntheticBatches, dot_shapes, tiny_config

from llm.model import forward, init_params, logical_axes, unstack_layers
from llm.train import train
from llm.train.layer_stats import activation_rms, layer_grad_norms
from llm.train.losses import make_loss
from llm.train.optim import make_optimizer, make_schedule
from llm.train.state import init_state
from llm.train.step import train_step
from llm.train.trainable import MODEL


def _tree(seed=0, n_layers=3):
    ks = jax.random.split(jax.random.key(seed), 3)
    return {
        "embed": jax.random.normal(ks[0], (7, 4)),
        "blocks": {
            "a": {"w": jax.random.normal(ks[1], (n_layers, 3, 4))},
            "b": jax.random.normal(ks[2], (n_layers, 5)),
        },
    }


def _by_hand(blocks):
    a, b = np.asarray(blocks["a"]["w"]), np.asarray(blocks["b"])
    return np.sqrt((a**2).sum(axis=(1, 2)) + (b**2).sum(axis=1))


def test_layer_grad_norms_is_each_layers_global_norm():
    tree = _tree()
    want = _by_hand(tree["blocks"])
    np.testing.assert_allclose(layer_grad_norms(tree), want, rtol=1e-6)
    # the decode layout (a tuple of per-layer trees) gives the same norms
    np.testing.assert_allclose(layer_grad_norms(unstack_layers(tree)), want, rtol=1e-6)
    # a train state's dict of components: every component's blocks count toward the layer
    lora = {"blocks": {"c": jnp.full((3, 2), 2.0)}}
    both = layer_grad_norms({MODEL: tree, "lora": lora, "head": {"w": jnp.ones((4, 2))}})
    np.testing.assert_allclose(both, np.sqrt(want**2 + 8.0), rtol=1e-6)


def test_layer_grad_norms_refuses_trees_without_stacked_blocks():
    with pytest.raises(ValueError, match="no 'blocks' subtree"):
        layer_grad_norms({MODEL: {"embed": jnp.ones((3, 2))}})
    ragged = _tree()
    ragged["blocks"]["b"] = jnp.ones((2, 5))  # 2 layers beside 3
    with pytest.raises(ValueError, match="not stacked along one leading layer axis"):
        layer_grad_norms(ragged)


def test_activation_rms_over_real_tokens():
    h_YBLD = (
        jax.random.normal(jax.random.key(0), (3, 2, 5, 4)) * jnp.arange(1, 4)[:, None, None, None]
    )
    mask_BL = np.ones((2, 5), bool)
    mask_BL[1, 3:] = False  # padding
    h = np.asarray(h_YBLD)
    want = np.sqrt(np.array([(h[y][mask_BL] ** 2).mean() for y in range(3)]))
    np.testing.assert_allclose(activation_rms(h_YBLD, mask_BL), want, rtol=1e-6)
    np.testing.assert_allclose(
        activation_rms(h_YBLD), np.sqrt((h**2).mean(axis=(1, 2, 3))), rtol=1e-6
    )
    with pytest.raises(ValueError, match="mask_BL has shape"):
        activation_rms(h_YBLD, mask_BL[:, :4])


def _val():
    return SyntheticBatches(8, 16, seed=1, limit=2)


def _records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("split") == "train"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A 4-step run with layer_stats on (log_every=3) and one with it off."""
    runs = {}
    for on in (True, False):
        run_dir = tmp_path_factory.mktemp("run")
        cfg = tiny_config(run_dir, "train.steps=4", "train.log_every=3",
                          f"train.layer_stats={str(on).lower()}")  # fmt: skip
        train(cfg, train_batches=SyntheticBatches(8, 16), val_batches=_val)
        runs[on] = (cfg, _records(run_dir))
    return runs


def test_records_carry_the_layer_keys_only_when_on(logged):
    cfg, records = logged[True]
    grad_keys = {f"layer{i:02d}/grad_norm" for i in range(cfg.model.n_layers)}
    act_keys = {"embed/act_rms"} | {f"layer{i:02d}/act_rms" for i in range(cfg.model.n_layers)}
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert grad_keys <= set(r)
        # activations: the first step, every log_every-th and the last
        assert (act_keys <= set(r)) == (r["step"] in (1, 3, 4)), r["step"]
    _, off = logged[False]
    assert len(off) == 4
    assert not any("/grad_norm" in k or "act_rms" in k for r in off for k in r)


def test_logged_stats_match_a_recomputation_at_step_1(logged):
    cfg, records = logged[True]
    first = records[0]
    params = init_params(cfg.model, jax.random.key(cfg.train.seed))  # the run's step-0 params
    batch = {k: jnp.asarray(v) for k, v in next(SyntheticBatches(8, 16)).items()}
    loss = make_loss(cfg)

    def mean_loss(p):
        out = loss(p, {}, batch, None)  # no dropout in the tiny config
        return out.total / out.weight

    norms_Y = layer_grad_norms(jax.grad(mean_loss)({MODEL: params}))
    logged_Y = [first[f"layer{i:02d}/grad_norm"] for i in range(cfg.model.n_layers)]
    np.testing.assert_allclose(logged_Y, norms_Y, rtol=1e-5)

    out = forward(cfg.model, params, batch["inputs"], positions_BL=batch["positions"],
                  segment_ids_BL=batch["segment_ids"], return_hidden_states=True)  # fmt: skip
    rms_Y = activation_rms(out.hidden_states, batch["segment_ids"])
    keys = ["embed/act_rms"] + [f"layer{i:02d}/act_rms" for i in range(cfg.model.n_layers)]
    np.testing.assert_allclose([first[k] for k in keys], rms_Y, rtol=1e-5)


def test_layer_stats_add_no_matmul_to_the_step():
    # on: a per-layer reduction of the gradients the step has; no second forward or backward
    jaxprs = {}
    for on in ("true", "false"):
        cfg = tiny_config("unused", f"train.layer_stats={on}")
        params = {MODEL: init_params(cfg.model, jax.random.key(0))}
        tx = make_optimizer(cfg.optim, cfg.train.steps, params, {MODEL: logical_axes(cfg.model)})
        state = init_state(params, tx, seed=0)
        batch = {k: jnp.asarray(v) for k, v in next(SyntheticBatches(8, 16)).items()}
        sched = make_schedule(cfg.optim, cfg.train.steps)
        step = lambda s, b, cfg=cfg, tx=tx, sched=sched: train_step(  # noqa: E731
            cfg, make_loss(cfg), tx, sched, s, b
        )
        jaxprs[on] = jax.make_jaxpr(step)(state, batch).jaxpr
    assert dot_shapes(jaxprs["true"]) == dot_shapes(jaxprs["false"])
    assert len(jaxprs["true"].outvars) == len(jaxprs["false"].outvars) + 2  # two layers


def test_layer_stats_refused_without_trained_blocks(tmp_path):
    batches = SyntheticBatches(8, 16)
    lstm = tiny_config(tmp_path / "a", "model.arch=lstm", "train.layer_stats=true")
    with pytest.raises(ValueError, match=r"train.layer_stats=true .* model.arch='lstm'"):
        train(lstm, train_batches=batches, val_batches=_val)
    frozen = tiny_config(tmp_path / "b", "train.freeze=[blocks]", "train.layer_stats=true")
    with pytest.raises(ValueError, match=r"train.layer_stats=true: no 'blocks' subtree"):
        train(frozen, train_batches=batches, val_batches=_val)


def test_under_lora_the_layers_hold_every_trained_leaf(tmp_path):
    # LoRA trains A and B of the blocks' matrices only, all inside `blocks`: the per-layer
    # norms then split the step's global gradient norm exactly (sum of squares)
    cfg = tiny_config(tmp_path, "train.steps=1", "peft.method=lora", "train.layer_stats=true")
    train(cfg, train_batches=SyntheticBatches(8, 16), val_batches=_val)
    (record,) = _records(tmp_path)
    layers = [record[f"layer{i:02d}/grad_norm"] for i in range(cfg.model.n_layers)]
    assert min(layers) > 0
    np.testing.assert_allclose(np.sqrt(np.sum(np.square(layers))), record["grad_norm"], rtol=1e-5)
