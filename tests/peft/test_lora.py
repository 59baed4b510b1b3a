"""LoRA: the adapter tree, its merge into the frozen decoder, training only the adapter."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from train_fixtures import SyntheticBatches, dot_shapes

from llm.config import ConfigError, load_config, save_config
from llm.model import forward, init_params, logical_axes
from llm.model.functional import abstract_params
from llm.peft import merge, n_trainable, unmerge
from llm.train.loop import Trainer, train
from llm.train.trainable import MODEL, model_params, trainable_from_config
from llm.train.trainable import merge as merge_trees

LORA = ["peft.method=lora", "peft.rank=3", "peft.alpha=6.0"]
# q/v (input "embed" first), o and down (input axes before a trailing "embed")
WIDE = "peft.target=[blocks/attn/(q|v|o)/w, blocks/mlp/down/w]"
# einsum of A [layers, *in, r] and B [layers, r, *out] per target, written out by hand
EINSUM = {
    "q": "lir,lrhd->lihd",
    "v": "lir,lrhd->lihd",
    "o": "lhdr,lre->lhde",
    "down": "lfr,lre->lfe",
}


def _split(cfg, params, seed=1):
    """(params, frozen) of the LoRA run for a concrete decoder `params`."""
    trainable = trainable_from_config(cfg)
    return trainable.split(params, logical_axes(cfg.model), key=jax.random.key(seed))


def _logits(cfg, model):
    tokens = jnp.asarray(next(SyntheticBatches(2, 16))["inputs"])
    return jax.jit(lambda p: forward(cfg.model, p, tokens).logits_BLV)(model)


def _randomise_b(split, seed=2):
    """The adapter with B drawn at random (at init B = 0, so A @ B would be zero)."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(split.params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [
        jax.random.normal(k, x.shape, x.dtype) * 0.1 if path[-1].key == "b" else x
        for k, (path, x) in zip(keys, leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(tree, new)


def test_zero_b_is_the_base_model_exactly(tiny):
    cfg = tiny(*LORA, WIDE)
    base = init_params(cfg.model, jax.random.key(0))
    split = _split(cfg, base)
    assert set(split.params) == {"lora"} and set(split.frozen) == {MODEL, "lora"}
    assert all(not np.any(b) for b in jax.tree.leaves(split.params["lora"])[1::2])  # every B
    np.testing.assert_array_equal(
        _logits(cfg, model_params(split.params, split.frozen)), _logits(cfg, base)
    )


@pytest.mark.parametrize("rslora", [False, True])
def test_merge_matches_the_formula_and_unmerge_recovers_the_base(tiny, rslora):
    cfg = tiny(*LORA, WIDE, f"peft.rslora={str(rslora).lower()}")
    base = init_params(cfg.model, jax.random.key(0))
    split = _split(cfg, base)
    params = _randomise_b(split)
    lora = merge_trees(params["lora"], split.frozen["lora"])  # A, B trained; scale frozen
    scale = 6.0 / (math.sqrt(3) if rslora else 3)
    merged = merge(base, lora)
    for part, names in (("attn", ("q", "v", "o")), ("mlp", ("down",))):
        for name in names:
            entry = lora["blocks"][part][name]["w"]
            assert float(entry["scale"]) == pytest.approx(scale, rel=1e-7)
            want = base["blocks"][part][name]["w"] + scale * np.einsum(
                EINSUM[name], entry["a"], entry["b"]
            )
            np.testing.assert_allclose(
                merged["blocks"][part][name]["w"], want, rtol=1e-5, atol=1e-6
            )
    np.testing.assert_array_equal(
        merged["blocks"]["mlp"]["up"]["w"], base["blocks"]["mlp"]["up"]["w"]
    )
    unmerged = _logits(cfg, model_params(params, split.frozen))  # adapter applied in the loss
    np.testing.assert_allclose(_logits(cfg, merged), unmerged, rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(unmerged - _logits(cfg, base))) > 1e-2  # the adapter does something
    for got, want in zip(
        jax.tree.leaves(unmerge(merged, lora)), jax.tree.leaves(base), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def _val():
    return SyntheticBatches(8, 16, seed=1, limit=2)


def test_training_changes_only_the_adapter(tiny):
    cfg = tiny("train.steps=3", *LORA)
    kw = dict(train_batches=SyntheticBatches(8, 16), val_batches=_val)
    first = Trainer(cfg, trainable=trainable_from_config(cfg), **kw)
    before = jax.device_get((first.state.params, first.state.frozen))
    first.ckpt.close()
    result = train(cfg, trainable=trainable_from_config(cfg), **kw)
    state = result["state"]
    assert set(state.params) == {"lora"}  # the decoder is wholly frozen
    for got, want in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(before[1]), strict=True):
        np.testing.assert_array_equal(got, want)  # base and scales bitwise unchanged
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(before[0]), strict=True):
        assert not np.array_equal(got, want)  # every A and B moved
    opt_shapes = {x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim}
    assert opt_shapes == {(2, 32, 3), (2, 3, 2, 16)}, opt_shapes  # moments of A and B only
    merged, base = result["params"], before[1][MODEL]  # the run's decoder: adapter merged in
    assert not np.array_equal(merged["blocks"]["attn"]["q"]["w"], base["blocks"]["attn"]["q"]["w"])
    np.testing.assert_array_equal(
        merged["blocks"]["attn"]["k"]["w"], base["blocks"]["attn"]["k"]["w"]
    )


def test_untargeted_frozen_matrices_get_no_gradient(tiny):
    """A weight gradient is a dot_general with the weight's shape: the MLP's (32, 64) and
    (64, 32) appear when training everything and never under LoRA on q/v."""
    shapes = {}
    for name, overrides in (("full", ()), ("lora", LORA)):
        cfg = tiny("train.steps=1", *overrides)
        tr = Trainer(cfg, train_batches=SyntheticBatches(8, 16), val_batches=_val,
                     trainable=trainable_from_config(cfg))  # fmt: skip
        batch = tr.put(next(SyntheticBatches(8, 16)))
        shapes[name] = dot_shapes(jax.make_jaxpr(tr.step_fn)(tr.state, batch).jaxpr)
        tr.ckpt.close()
    mlp = lambda ss: [s for s in ss if s[-2:] in ((32, 64), (64, 32))]  # noqa: E731
    assert mlp(shapes["full"]) and not mlp(shapes["lora"]), mlp(shapes["lora"])
    assert (2, 32, 32) in shapes["lora"]  # A @ B, [layers, in, out] of q and v


ALL = "blocks/(attn/(q|k|v|o)|mlp/(up|down))/w"


@pytest.mark.parametrize("target", ["blocks/attn/(q|v)/w", ALL])
def test_trainable_count_is_the_formula(tiny, target):
    cfg = tiny("peft.method=lora", "peft.rank=4", f"peft.target=[{target}]")
    m = cfg.model
    split = trainable_from_config(cfg).split(abstract_params(m), logical_axes(m))
    head_dim = m.d_model // m.n_heads
    q = o = m.d_model * 4 + 4 * m.n_heads * head_dim  # in*r + r*out, one layer
    k = v = m.d_model * 4 + 4 * (m.n_kv_heads or m.n_heads) * head_dim
    up = down = m.d_model * 4 + 4 * m.d_ff
    per_layer = q + k + v + o + up + down if target == ALL else q + v
    count = sum(x.size for x in jax.tree.leaves(split.params))
    assert count == n_trainable(split.params["lora"]) == m.n_layers * per_layer


def test_bad_descriptions_are_errors(tiny):
    with pytest.raises(ValueError, match="'blocks/attn/x/w' matches no model param"):
        trainable_from_config(tiny("peft.method=lora", "peft.target=[blocks/attn/x/w]"))
    with pytest.raises(ValueError, match=r"attn_norm/scale has axes .* blocks' weight matrices"):
        trainable_from_config(tiny("peft.method=lora", "peft.target=[blocks/attn_norm/scale]"))
    with pytest.raises(ValueError, match="token_embed has axes"):
        trainable_from_config(tiny("peft.method=lora", "peft.target=[token_embed]"))
    with pytest.raises(ValueError, match=r"train.freeze: .* already freezes the whole decoder"):
        trainable_from_config(tiny("peft.method=lora", "train.freeze=[blocks/mlp]"))
    with pytest.raises(ConfigError, match=r"peft\.dropout: got 0\.1"):
        tiny("peft.dropout=0.1")
    with pytest.raises(ConfigError, match=r"peft\.rank: must be positive"):
        tiny("peft.rank=0")


def test_config_round_trips_and_none_is_train_freeze(tiny, tmp_path):
    cfg = tiny(*LORA, "peft.rslora=true")
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    plain = trainable_from_config(tiny("train.freeze=[token_embed]"))
    assert plain.freeze == ("token_embed",) and not plain.extra


@pytest.mark.parametrize("preset", ["fsdp", "fsdp_tp"])
def test_adapter_is_sharded_like_its_base_weight(preset):
    from sharding_fixtures import preset_config

    from llm.sharding.init import make_plan
    from llm.sharding.mesh import make_mesh
    from llm.train.build import init_train_state, state_layout

    cfg = preset_config(preset, "peft.method=lora", "peft.rank=4", WIDE)
    plan = make_plan(cfg, make_mesh(cfg.mesh))
    layout = state_layout(cfg, plan, trainable_from_config(cfg))
    state = init_train_state(cfg, layout)
    base_specs = layout.specs.frozen[MODEL]["blocks"]
    for part, name in (("attn", "q"), ("attn", "o"), ("mlp", "down")):
        base = tuple(base_specs[part][name]["w"])
        n_in = 1 if name == "q" else len(base) - 2
        spec = layout.specs.params["lora"]["blocks"][part][name]["w"]
        assert spec["a"] == PartitionSpec(*base[: 1 + n_in], None)
        assert spec["b"] == PartitionSpec(base[0], None, *base[1 + n_in :])
    assert "fsdp" in tuple(layout.specs.params["lora"]["blocks"]["attn"]["q"]["w"]["a"])
    a = state.params["lora"]["blocks"]["attn"]["q"]["w"]["a"]
    assert a.addressable_shards[0].data.shape[1] < a.shape[1]  # really split, not replicated
    assert layout.specs.frozen["lora"]["blocks"]["attn"]["q"]["w"]["scale"] == PartitionSpec()


def test_lora_on_a_warm_started_hugging_face_model(tiny, tmp_path):
    """The real use: a pretrained decoder (the source's architecture, not the preset's)."""
    from hf_models import make_hf_model, save_hf

    from llm.checkpoint import load_model

    hf_dir = save_hf(make_hf_model("llama"), tmp_path / "hf")
    cfg = tiny("train.steps=2", f"train.init_from={hf_dir}", *LORA)  # tiny: d_model 32, 2 heads
    trainable = trainable_from_config(cfg)
    kw = dict(train_batches=SyntheticBatches(8, 16), val_batches=_val, trainable=trainable)
    result = train(cfg, **kw)
    state, source = result["state"], load_model(hf_dir).params
    q = state.params["lora"]["blocks"]["attn"]["q"]["w"]
    assert q["a"].shape == (2, 32, 3) and q["b"].shape == (2, 3, 4, 8)  # the source's 4 heads
    assert np.any(q["b"])
    flat = jax.tree_util.tree_flatten_with_path(source)[0]
    for (path, want), got in zip(flat, jax.tree.leaves(state.frozen[MODEL]), strict=True):
        np.testing.assert_array_equal(got, want, err_msg=str(path))
    assert not np.array_equal(
        result["params"]["blocks"]["attn"]["q"]["w"], source["blocks"]["attn"]["q"]["w"]
    )


def test_a_lora_run_resumes_to_the_uninterrupted_adapter(tiny, tmp_path):
    def run(run_dir, steps):
        cfg = tiny(f"train.steps={steps}", "train.ckpt_every=1", f"train.run_dir={run_dir}", *LORA)
        kw = dict(train_batches=SyntheticBatches(8, 16), val_batches=_val)
        return train(cfg, trainable=trainable_from_config(cfg), **kw)

    straight = run(tmp_path / "straight", 3)["state"]
    run(tmp_path / "split", 2)
    resumed = run(tmp_path / "split", 3)
    assert resumed["resumed_from"] == 2
    for tree in ("params", "frozen"):
        got, want = getattr(resumed["state"], tree), getattr(straight, tree)
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, b)


def test_model_params_applies_registered_adapters_from_either_tree(monkeypatch):
    import llm.peft as P

    monkeypatch.setitem(P.ADAPTERS, "gain", lambda m, a: {**m, "w": m["w"] * a["g"]})
    base = {"w": jnp.full((2,), 3.0), "u": jnp.ones(2)}
    np.testing.assert_array_equal(model_params({MODEL: base}, {})["w"], [3.0, 3.0])
    for params, frozen in (({MODEL: base, "gain": {"g": 2.0}}, {}),
                           ({MODEL: base}, {"gain": {"g": 2.0}})):  # fmt: skip
        np.testing.assert_array_equal(model_params(params, frozen)["w"], [6.0, 6.0])
    np.testing.assert_array_equal(model_params({MODEL: base, "head": {"g": 2.0}}, {})["w"], [3, 3])
    with pytest.raises(ValueError, match="'gain' is already registered"):
        P.register_adapter("gain", lambda m, a: m)


def test_a_lora_run_from_yaml_loads_as_its_merged_model(tiny):
    """`peft.method=lora` alone (no Python trainable) trains the adapter; load_model (eval,
    generate, serve, a later init_from) returns the decoder with the adapter merged in."""
    from llm.checkpoint import load_model

    cfg = tiny("train.steps=2", *LORA)
    result = train(cfg, train_batches=SyntheticBatches(8, 16), val_batches=_val)
    assert set(result["state"].params) == {"lora"}  # the config alone chose LoRA
    loaded = load_model(cfg.train.run_dir)
    assert loaded.step == 2
    for got, want in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(result["params"]),
                         strict=True):  # fmt: skip
        np.testing.assert_array_equal(got, want)
    base = result["state"].frozen[MODEL]["blocks"]["attn"]["q"]["w"]
    assert not np.array_equal(loaded.params["blocks"]["attn"]["q"]["w"], base)  # merged


def test_every_config_method_is_registered():
    """`peft.method` accepts exactly the registered methods (plus "none"): a name in the
    config's Literal without a Method would pass validation and fail at the first run."""
    import typing

    from llm.config.peft import PeftMethod
    from llm.peft import METHODS

    assert set(typing.get_args(PeftMethod)) == {"none", *METHODS}
