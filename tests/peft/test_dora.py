"""DoRA: magnitude m times the direction of W + scale * A @ B, merged into the frozen decoder."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import SyntheticBatches

from llm.model import forward, init_params, logical_axes
from llm.model.functional import abstract_params
from llm.peft import dora
from llm.train.loop import Trainer, train
from llm.train.trainable import MODEL, model_params, trainable_from_config
from llm.train.trainable import merge as merge_trees

DORA = ["peft.method=dora", "peft.rank=3", "peft.alpha=6.0"]
WIDE = "peft.target=[blocks/attn/(q|v|o)/w, blocks/mlp/down/w]"


def _split(cfg, params, seed=1):
    """(params, frozen) of the DoRA run for a concrete decoder `params`, built under jit as a
    run builds them."""
    trainable = trainable_from_config(cfg)
    axes = logical_axes(cfg.model)
    build = jax.jit(lambda p, k: dataclasses.astuple(trainable.split(p, axes, key=k))[:2])
    return build(params, jax.random.key(seed))


def _logits(cfg, params, frozen):
    tokens = jnp.asarray(next(SyntheticBatches(2, 16))["inputs"])
    run = jax.jit(lambda p, f: forward(cfg.model, model_params(p, f), tokens).logits_BLV)
    return run(params, frozen)


def _perturb(params, seed=2):
    """B random and m off its init (at init B = 0 and m = ||W||_c: the base model)."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = []
    for k, (path, x) in zip(keys, leaves, strict=True):
        noise = jax.random.normal(k, x.shape, x.dtype)
        new.append({"a": x, "b": 0.1 * noise, "m": x * (1 + 0.2 * noise)}[path[-1].key])
    return jax.tree_util.tree_unflatten(tree, new)


def test_init_is_the_base_model_to_float_rounding(tiny):
    """m is ||W||_c and B is 0, so W' = (m / ||W||_c) * W. The two norms are the same sum
    computed by two compiled programs (the init and the loss), which XLA may reduce in
    different orders, so m / ||V||_c is 1 to within 2 ulp, not always exactly: step 0 is the
    base to float rounding, not bit for bit."""
    cfg = tiny(*DORA, WIDE)
    base = init_params(cfg.model, jax.random.key(0))
    params, frozen = _split(cfg, base)
    entry = params["dora"]["blocks"]["mlp"]["down"]["w"]
    w = np.asarray(base["blocks"]["mlp"]["down"]["w"], np.float64)  # [layers, mlp | embed]
    np.testing.assert_allclose(entry["m"], np.sqrt((w**2).sum(axis=1)), rtol=1e-6)
    assert not np.any(entry["b"])
    merged = dora.merge(base, merge_trees(params["dora"], frozen["dora"]))
    for got, want in zip(jax.tree.leaves(merged), jax.tree.leaves(base), strict=True):
        np.testing.assert_allclose(got, want, rtol=2 * np.finfo(np.float32).eps, atol=0)
    want = _logits(cfg, {MODEL: base}, {})
    np.testing.assert_allclose(_logits(cfg, params, frozen), want, rtol=0, atol=1e-6)


def _reference(w, a, b, m, scale, layout):
    """W' = m * V / ||V||_c in NumPy (float64), written out per weight layout."""
    if layout == "q":  # [l, embed | heads, head_dim]: norm over embed
        v = w + scale * np.einsum("lir,lrhd->lihd", a, b)
        return m[:, None] * v / np.sqrt((v**2).sum(axis=1))[:, None]
    if layout == "o":  # [l, heads, head_dim | embed]: norm over heads and head_dim
        v = w + scale * np.einsum("lhdr,lre->lhde", a, b)
        return m[:, None, None] * v / np.sqrt((v**2).sum(axis=(1, 2)))[:, None, None]
    v = w + scale * np.einsum("lfr,lre->lfe", a, b)  # down [l, mlp | embed]: norm over mlp
    return m[:, None] * v / np.sqrt((v**2).sum(axis=1))[:, None]


@pytest.mark.parametrize("rslora", [False, True])
def test_merge_is_the_formula_equals_unmerged_and_unmerges(tiny, rslora):
    cfg = tiny(*DORA, WIDE, f"peft.rslora={str(rslora).lower()}")
    base = init_params(cfg.model, jax.random.key(0))
    params, frozen = _split(cfg, base)
    params = {"dora": _perturb(params["dora"])}
    tree = merge_trees(params["dora"], frozen["dora"])
    scale = 6.0 / (math.sqrt(3) if rslora else 3)
    merged = dora.merge(base, tree)
    for part, name in (("attn", "q"), ("attn", "o"), ("mlp", "down")):
        e = {k: np.asarray(v, np.float64) for k, v in tree["blocks"][part][name]["w"].items()}
        assert float(e["scale"]) == pytest.approx(scale, rel=1e-7)
        w = np.asarray(base["blocks"][part][name]["w"], np.float64)
        want = _reference(w, e["a"], e["b"], e["m"], e["scale"], name)
        np.testing.assert_allclose(merged["blocks"][part][name]["w"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        merged["blocks"]["attn"]["k"]["w"], base["blocks"]["attn"]["k"]["w"]
    )
    unmerged = _logits(cfg, params, frozen)  # the adapter applied inside the loss
    np.testing.assert_allclose(_logits(cfg, {MODEL: merged}, {}), unmerged, rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(unmerged - _logits(cfg, {MODEL: base}, {}))) > 1e-2
    back = dora.unmerge(merged, tree, dora.column_norms(base, tree))
    for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(base), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    with pytest.raises(ValueError, match="no column norms for blocks/attn/o/w"):
        dora.unmerge(merged, tree, {})


def test_the_norm_is_detached_from_the_gradient():
    """PEFT and the paper (sec. 4.3) treat ||V||_c as a constant: dW'/dV = m / ||V||_c, so for
    a loss sum(G * W') the gradient of B is scale * A^T (G * m / ||V||_c), written here in
    NumPy; the undetached gradient (through the norm too) differs."""
    rng = np.random.default_rng(0)
    w, g = rng.normal(size=(2, 6, 5)), rng.normal(size=(2, 6, 5))  # [layers, in | out]
    entry = {"a": rng.normal(size=(2, 6, 3)), "b": rng.normal(size=(2, 3, 5)),
             "m": rng.uniform(1, 2, size=(2, 5)), "scale": np.float32(0.5)}  # fmt: skip
    entry = {k: jnp.asarray(v, jnp.float32) for k, v in entry.items()}
    w32, g32 = jnp.asarray(w, jnp.float32), jnp.asarray(g, jnp.float32)

    def loss(e):
        return jnp.sum(g32 * dora.apply_dora({"w": w32}, {"w": e})["w"])

    grad_b = jax.grad(loss)(entry)["b"]
    a, b, m = (np.asarray(entry[k], np.float64) for k in ("a", "b", "m"))
    v = w + 0.5 * a @ b
    norm = np.sqrt((v**2).sum(axis=1, keepdims=True))
    want = 0.5 * np.swapaxes(a, 1, 2) @ (g * m[:, None] / norm)
    np.testing.assert_allclose(grad_b, want, rtol=1e-5, atol=1e-6)

    def undetached(e):
        v = w32 + e["scale"] * e["a"] @ e["b"]
        return jnp.sum(g32 * e["m"][:, None] * v / jnp.linalg.norm(v, axis=1, keepdims=True))

    assert np.max(np.abs(jax.grad(undetached)(entry)["b"] - want)) > 1e-2


def _val():
    return SyntheticBatches(8, 16, seed=1, limit=2)


def test_training_changes_only_the_adapter(tiny):
    cfg = tiny("train.steps=3", *DORA)
    kw = dict(train_batches=SyntheticBatches(8, 16), val_batches=_val)
    first = Trainer(cfg, trainable=trainable_from_config(cfg), **kw)
    before = jax.device_get((first.state.params, first.state.frozen))
    first.ckpt.close()
    state = train(cfg, trainable=trainable_from_config(cfg), **kw)["state"]
    assert set(state.params) == {"dora"} and set(state.frozen) == {MODEL, "dora"}
    for got, want in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(before[1]), strict=True):
        np.testing.assert_array_equal(got, want)  # base and scales bitwise unchanged
    moved = jax.tree.map(lambda x, y: not np.array_equal(x, y), state.params, before[0])
    assert all(jax.tree.leaves(moved)), moved  # every A, B and m
    opt_shapes = {x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim}
    assert opt_shapes == {(2, 32, 3), (2, 3, 2, 16), (2, 2, 16)}, opt_shapes  # A, B, m of q, v


ALL = "blocks/(attn/(q|k|v|o)|mlp/(up|down))/w"


@pytest.mark.parametrize("target", ["blocks/attn/(q|v)/w", ALL])
def test_trainable_count_is_the_formula(tiny, target):
    """LoRA's in*r + r*out per layer plus m's out."""
    cfg = tiny("peft.method=dora", "peft.rank=4", f"peft.target=[{target}]")
    m = cfg.model
    split = trainable_from_config(cfg).split(abstract_params(m), logical_axes(m))
    head_dim, kv = m.d_model // m.n_heads, m.n_kv_heads or m.n_heads
    q = m.d_model * 4 + 4 * m.n_heads * head_dim + m.n_heads * head_dim
    k = v = m.d_model * 4 + 4 * kv * head_dim + kv * head_dim
    o = m.n_heads * head_dim * 4 + 4 * m.d_model + m.d_model
    up = m.d_model * 4 + 4 * m.d_ff + m.d_ff
    down = m.d_ff * 4 + 4 * m.d_model + m.d_model
    per_layer = q + k + v + o + up + down if target == ALL else q + v
    count = sum(x.size for x in jax.tree.leaves(split.params))
    assert count == dora.n_trainable(split.params["dora"]) == m.n_layers * per_layer


def test_magnitude_is_sharded_like_the_output_side(tiny):
    cfg = tiny(*DORA, WIDE)
    axes = trainable_from_config(cfg).split(abstract_params(cfg.model), logical_axes(cfg.model))
    specs = axes.params_axes["dora"]["blocks"]
    assert tuple(specs["attn"]["q"]["w"]["m"]) == ("layers", "heads", "head_dim")
    assert tuple(specs["attn"]["o"]["w"]["m"]) == ("layers", "embed")
    assert tuple(specs["mlp"]["down"]["w"]["m"]) == ("layers", "embed")


def test_bad_targets_and_trees_are_errors(tiny):
    with pytest.raises(ValueError, match="'blocks/attn/x/w' matches no model param"):
        trainable_from_config(tiny("peft.method=dora", "peft.target=[blocks/attn/x/w]"))
    with pytest.raises(ValueError, match=r"attn_norm/scale has axes .* blocks' weight matrices"):
        trainable_from_config(tiny("peft.method=dora", "peft.target=[blocks/attn_norm/scale]"))
    cfg = tiny(*DORA)
    model, axes = abstract_params(cfg.model), logical_axes(cfg.model)
    with pytest.raises(ValueError, match=r"DoRA init: blocks/attn/q/w is abstract"):
        dora.init_dora(cfg.peft, model, axes, jax.random.key(0))
    base = init_params(cfg.model, jax.random.key(0))
    tree, _ = dora.init_dora(cfg.peft, base, axes, jax.random.key(0))
    tree["blocks"]["attn"]["q"]["w"]["m"] = jnp.ones((2, 32))
    with pytest.raises(ValueError, match=r"blocks/attn/q/w has m \(2, 32\); .* needs \(2, 2, 16\)"):
        dora.apply_dora(base, tree)
