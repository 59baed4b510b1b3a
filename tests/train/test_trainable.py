"""Trainable vs frozen: the split, and frozen leaves that get no gradient, state or update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from train_fixtures import SyntheticBatches, dot_shapes

from llm.model import init_params, logical_axes
from llm.train.loop import Trainer, train
from llm.train.trainable import MODEL, Component, Trainable, merge, model_params

MLP = "blocks/mlp/"  # up [2, 32, 64] and down [2, 64, 32]: shapes no other tiny param has


def _val():
    return SyntheticBatches(8, 16, seed=1, limit=2)


def test_split_then_merge_is_the_model(tiny):
    cfg = tiny()
    params = init_params(cfg.model, jax.random.key(0))
    split = Trainable(freeze=(MLP, "token_embed")).split(params, logical_axes(cfg.model))
    assert set(split.frozen[MODEL]) == {"blocks", "token_embed"}
    assert set(split.frozen[MODEL]["blocks"]) == {"mlp"}
    assert "mlp" not in split.params[MODEL]["blocks"] and "token_embed" not in split.params[MODEL]
    assert jax.tree.structure(split.params_axes, is_leaf=lambda x: isinstance(x, PartitionSpec)) \
        == jax.tree.structure(split.params)  # fmt: skip
    merged = model_params(split.params, split.frozen)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params), strict=True):
        assert a is b


def test_default_trains_everything(tiny):
    cfg = tiny()
    params = init_params(cfg.model, jax.random.key(0))
    split = Trainable().split(params, logical_axes(cfg.model))
    assert split.frozen == {} and split.params[MODEL] is not params
    assert len(jax.tree.leaves(split.params)) == len(jax.tree.leaves(params))


def test_bad_descriptions_are_errors(tiny):
    cfg = tiny()
    params = init_params(cfg.model, jax.random.key(0))
    with pytest.raises(ValueError, match="'no_such' matches no model param"):
        Trainable(freeze=("no_such",)).check(params)
    with pytest.raises(ValueError, match="nothing would be trained"):
        Trainable(freeze=(".",)).check(params)
    with pytest.raises(ValueError, match="a/b is in both"):
        merge({"a": {"b": 1}}, {"a": {"b": 2}})


@pytest.mark.parametrize("frozen", [False, True])
def test_frozen_leaves_get_no_gradient(tiny, frozen):
    """A weight gradient is a dot_general with the weight's shape; none exists when frozen."""
    cfg = tiny("train.steps=1", *([f"train.freeze=[{MLP}]"] if frozen else []))
    tr = Trainer(cfg, train_batches=SyntheticBatches(8, 16), val_batches=_val)
    jaxpr = jax.make_jaxpr(tr.step_fn)(tr.state, tr.put(next(SyntheticBatches(8, 16)))).jaxpr
    mlp_grads = [s for s in dot_shapes(jaxpr) if s[-2:] in ((32, 64), (64, 32))]
    assert bool(mlp_grads) != frozen, mlp_grads
    tr.ckpt.close()


def test_frozen_leaves_have_no_state_and_never_change(tiny):
    cfg = tiny("train.steps=4", f"train.freeze=[{MLP}, token_embed]")
    first = Trainer(cfg, train_batches=SyntheticBatches(8, 16), val_batches=_val)
    before = jax.device_get(model_params(first.state.params, first.state.frozen))
    first.ckpt.close()
    result = train(cfg, train_batches=SyntheticBatches(8, 16), val_batches=_val)
    state = result["state"]
    # optimiser state: every array leaf mirrors a trained param; none has a frozen shape
    opt_shapes = {x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim}
    assert not opt_shapes & {(2, 32, 64), (2, 64, 32), (259, 32)}, opt_shapes
    assert (2, 32, 2, 16) in opt_shapes  # the trained attention weights do have moments
    after = result["params"]
    for name in ("token_embed",):
        np.testing.assert_array_equal(after[name], before[name])
    mlp_after, mlp_before = after["blocks"]["mlp"], before["blocks"]["mlp"]
    for a, b in zip(jax.tree.leaves(mlp_after), jax.tree.leaves(mlp_before), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(after["blocks"]["attn"]["q"]["w"], before["blocks"]["attn"]["q"]["w"])


def test_extra_components_train_or_stay_frozen(tiny):
    """A trainable head and a frozen tree beside the decoder, both read by a Python loss."""
    from llm.train.losses import CausalLMLoss, LossOutput

    cfg = tiny("train.steps=3")
    axes = {"w": PartitionSpec("embed")}
    head = Component(lambda k: {"w": jax.random.normal(k, (32,)) * 0.1}, axes, trainable=True)
    fixed = Component(lambda k: {"w": jnp.ones((32,))}, axes, trainable=False)

    class WithHead(CausalLMLoss):
        def __call__(self, params, frozen, batch, key):
            out = super().__call__(params, frozen, batch, key)
            extra = jnp.sum(jnp.square(params["head"]["w"] - frozen["fixed"]["w"]))
            return LossOutput(out.total + extra * out.weight, out.weight, out.metrics)

    trainable = Trainable(extra={"head": head, "fixed": fixed})
    kw = dict(train_batches=SyntheticBatches(8, 16), val_batches=_val, loss=WithHead(cfg.model))
    first = Trainer(cfg, trainable=trainable, **kw)
    start = np.asarray(first.state.params["head"]["w"])
    first.ckpt.close()
    state = train(cfg, trainable=trainable, **kw)["state"]
    gap = lambda w: float(np.sum(np.square(np.asarray(w) - 1.0)))  # noqa: E731
    assert gap(state.params["head"]["w"]) < gap(start)  # pulled towards the frozen ones
    np.testing.assert_array_equal(state.frozen["fixed"]["w"], np.ones(32))
