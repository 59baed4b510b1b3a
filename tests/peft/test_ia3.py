"""(IA)^3: learned vectors rescaling keys, values and the FFN intermediate, merged as W * l."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import SyntheticBatches

from llm.config import load_config
from llm.model import forward, init_params, logical_axes
from llm.model.functional import abstract_params
from llm.peft import ia3
from llm.train.loop import Trainer, train
from llm.train.trainable import MODEL, model_params, trainable_from_config

IA3 = ["peft.method=ia3"]
WIDE = "peft.target=[blocks/attn/(k|v|o)/w, blocks/mlp/down/w]"
BIASES = ["model.qkv_bias=true", "model.mlp_bias=true"]


def _split(cfg, params, seed=1):
    trainable = trainable_from_config(cfg)
    axes = logical_axes(cfg.model)
    build = jax.jit(lambda p, k: dataclasses.astuple(trainable.split(p, axes, key=k))[:2])
    return build(params, jax.random.key(seed))


def _logits(cfg, params, frozen):
    tokens = jnp.asarray(next(SyntheticBatches(2, 16))["inputs"])
    run = jax.jit(lambda p, f: forward(cfg.model, model_params(p, f), tokens).logits_BLV)
    return run(params, frozen)


def test_default_target_is_the_papers_and_lora_keeps_its_own():
    """`peft.target` left out (null) means the method's default; given, it is used as is."""
    defaults = {m: load_config(None, [f"peft.method={m}"]).peft.target for m in ("ia3", "lora")}
    assert defaults == {"ia3": ("blocks/attn/(k|v)/w", "blocks/mlp/down/w"),
                        "lora": ("blocks/attn/(q|v)/w",)}  # fmt: skip
    given = load_config(None, [*IA3, "peft.target=[blocks/mlp/up/w]"]).peft.target
    assert given == ("blocks/mlp/up/w",)


def test_init_is_the_base_model_bit_for_bit(tiny):
    """l starts at ones and W * 1.0 is W exactly in IEEE arithmetic (biases too)."""
    cfg = tiny(*IA3, WIDE, *BIASES)
    base = init_params(cfg.model, jax.random.key(0))
    params, frozen = _split(cfg, base)
    assert set(params) == {"ia3"} and set(frozen) == {MODEL}
    assert all(np.all(x == 1.0) for x in jax.tree.leaves(params))
    np.testing.assert_array_equal(_logits(cfg, params, frozen), _logits(cfg, {MODEL: base}, {}))


def _random_vectors(tree, seed=2):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [1 + 0.5 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(treedef, new)


def test_merge_is_the_formula_equals_unmerged_and_unmerges(tiny):
    """k (and its bias) scaled per output feature [kv_heads, head_dim], o per input feature
    [heads, head_dim], down per input feature [mlp]; written out per layout in NumPy."""
    cfg = tiny(*IA3, WIDE, *BIASES)
    base = init_params(cfg.model, jax.random.key(0))
    params, frozen = _split(cfg, base)
    tree = _random_vectors(params["ia3"])
    merged = ia3.merge(base, tree)
    attn, mlp = base["blocks"]["attn"], base["blocks"]["mlp"]
    l_k = np.asarray(tree["blocks"]["attn"]["k"]["w"]["l"])[:, 0]  # [layers, kv_heads, hd]
    l_o = np.asarray(tree["blocks"]["attn"]["o"]["w"]["l"])[..., 0]  # [layers, heads, hd]
    l_ff = np.asarray(tree["blocks"]["mlp"]["down"]["w"]["l"])[..., 0]  # [layers, mlp]
    want = {
        ("attn", "k", "w"): np.einsum("lehd,lhd->lehd", attn["k"]["w"], l_k),
        ("attn", "k", "b"): np.asarray(attn["k"]["b"]) * l_k,
        ("attn", "o", "w"): np.einsum("lhde,lhd->lhde", attn["o"]["w"], l_o),
        ("attn", "o", "b"): attn["o"]["b"] if "b" in attn["o"] else None,
        ("mlp", "down", "w"): np.einsum("lfe,lf->lfe", mlp["down"]["w"], l_ff),
        ("mlp", "down", "b"): mlp["down"]["b"],  # an input-side vector leaves the bias alone
        ("attn", "q", "w"): attn["q"]["w"],
    }
    for (part, name, leaf), value in want.items():
        if value is not None:
            got = merged["blocks"][part][name][leaf]
            np.testing.assert_allclose(got, value, rtol=1e-6, err_msg=f"{name}/{leaf}")
    unmerged = _logits(cfg, {"ia3": tree}, frozen)  # the vectors applied inside the loss
    np.testing.assert_allclose(_logits(cfg, {MODEL: merged}, {}), unmerged, rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(unmerged - _logits(cfg, {MODEL: base}, {}))) > 1e-2
    for got, base_leaf in zip(
        jax.tree.leaves(ia3.unmerge(merged, tree)), jax.tree.leaves(base), strict=True
    ):
        np.testing.assert_allclose(got, base_leaf, rtol=1e-6, atol=1e-7)
    tree["blocks"]["mlp"]["down"]["w"]["l"] = tree["blocks"]["mlp"]["down"]["w"]["l"].at[0].set(0)
    with pytest.raises(ValueError, match="blocks/mlp/down/w has a zero scale"):
        ia3.unmerge(merged, tree)


def _val():
    return SyntheticBatches(8, 16, seed=1, limit=2)


def test_training_changes_only_the_vectors(tiny):
    cfg = tiny("train.steps=3", *IA3)
    kw = dict(train_batches=SyntheticBatches(8, 16), val_batches=_val)
    first = Trainer(cfg, trainable=trainable_from_config(cfg), **kw)
    before = jax.device_get((first.state.params, first.state.frozen))
    first.ckpt.close()
    state = train(cfg, trainable=trainable_from_config(cfg), **kw)["state"]
    assert set(state.params) == {"ia3"} and set(state.frozen) == {MODEL}
    for got, want in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(before[1]), strict=True):
        np.testing.assert_array_equal(got, want)  # the decoder bitwise unchanged
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(before[0]), strict=True):
        assert not np.array_equal(got, want)  # every l moved
    opt_shapes = {x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim}
    assert opt_shapes == {(2, 1, 2, 16), (2, 64, 1)}, opt_shapes  # l of k, v and of down


@pytest.mark.parametrize("target", [None, "blocks/(attn/(q|k|v|o)|mlp/(up|down))/w"])
def test_trainable_count_is_the_formula(tiny, target):
    """One scale per rescaled feature: k, v, q outputs; o, down inputs; up's output."""
    cfg = tiny(*IA3, *([f"peft.target=[{target}]"] if target else []))
    m = cfg.model
    split = trainable_from_config(cfg).split(abstract_params(m), logical_axes(m))
    head_dim, kv = m.d_model // m.n_heads, m.n_kv_heads or m.n_heads
    per_layer = 2 * kv * head_dim + m.d_ff  # k, v, down: the paper's
    if target:
        per_layer += 2 * m.n_heads * head_dim + m.d_ff  # q and o, up
    count = sum(x.size for x in jax.tree.leaves(split.params))
    assert count == ia3.n_trainable(split.params["ia3"]) == m.n_layers * per_layer


def test_vectors_are_sharded_like_the_scaled_side(tiny):
    cfg = tiny(*IA3, WIDE)
    split = trainable_from_config(cfg).split(abstract_params(cfg.model), logical_axes(cfg.model))
    specs = split.params_axes["ia3"]["blocks"]
    assert tuple(specs["attn"]["k"]["w"]["l"]) == ("layers", None, "kv_heads", "head_dim")
    assert tuple(specs["attn"]["o"]["w"]["l"]) == ("layers", "heads", "head_dim", None)
    assert tuple(specs["mlp"]["down"]["w"]["l"]) == ("layers", "mlp", None)


def test_bad_targets_and_trees_are_errors(tiny):
    with pytest.raises(ValueError, match="'blocks/mlp/x/w' matches no model param"):
        trainable_from_config(tiny(*IA3, "peft.target=[blocks/mlp/x/w]"))
    with pytest.raises(ValueError, match="token_embed has axes"):
        trainable_from_config(tiny(*IA3, "peft.target=[token_embed]"))
    cfg = tiny(*IA3)
    base = init_params(cfg.model, jax.random.key(0))
    tree = {"blocks": {"mlp": {"down": {"w": {"l": jnp.ones((2, 32, 1))}}}}}
    with pytest.raises(ValueError, match=r"blocks/mlp/down/w has l \(2, 32, 1\), which does not"):
        ia3.apply_ia3(base, tree)
    with pytest.raises(ValueError, match="names blocks/mlp/gate, which the model lacks"):
        ia3.apply_ia3(base, {"blocks": {"mlp": {"gate": {"w": {"l": jnp.ones(2)}}}}})
