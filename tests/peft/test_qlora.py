"""QLoRA: LoRA on a frozen base stored as NF4 or int8 codes (llm/peft/qlora.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_quant import assert_codes_match
from train_fixtures import SyntheticBatches

from llm.config import ConfigError
from llm.model import forward, init_params, logical_axes
from llm.peft import quant
from llm.peft.qlora import dequantize_tree, is_matrix, stored_bytes
from llm.train.build import abstract_split
from llm.train.loop import Trainer, train
from llm.train.losses import make_loss
from llm.train.trainable import MODEL, model_params, path_of, trainable_from_config

# block 16: the tiny model's head_dim, the shortest last axis of its matrices
QLORA = ["peft.method=qlora", "peft.rank=3", "peft.alpha=6.0", "peft.quant_block=16"]
MATRICES = {
    "blocks/attn/q/w", "blocks/attn/k/w", "blocks/attn/v/w", "blocks/attn/o/w",
    "blocks/mlp/up/w", "blocks/mlp/down/w", "token_embed", "pos_embed",
}  # fmt: skip
CODE_DTYPE = {"nf4": np.uint8, "int8": np.int8}


def _split(cfg, params, seed=1):
    return trainable_from_config(cfg).split(
        params, logical_axes(cfg.model), key=jax.random.key(seed)
    )


def _flat(tree):
    return {path_of(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _val():
    return SyntheticBatches(8, 16, seed=1, limit=2)


def _batch():
    return {k: jnp.asarray(v) for k, v in next(SyntheticBatches(2, 16, seed=5)).items()}


def _mean_loss(cfg, params, frozen):
    """The run's loss (mean cross-entropy) over the two validation batches."""
    loss = jax.jit(lambda p, f, b: make_loss(cfg)(p, f, b, None))
    outs = [loss(params, frozen, {k: jnp.asarray(v) for k, v in b.items()}) for b in _val()]
    return sum(float(o.total) for o in outs) / sum(float(o.weight) for o in outs)


def _logits(cfg, model):
    return jax.jit(lambda p: forward(cfg.model, p, _batch()["inputs"]).logits_BLV)(model)


@pytest.mark.parametrize("fmt", ["nf4", "int8"])
def test_the_frozen_base_holds_the_codes(tiny, fmt):
    cfg = tiny(*QLORA, f"peft.quant={fmt}")
    base = init_params(cfg.model, jax.random.key(0))
    split = _split(cfg, base)
    assert set(split.params) == {"qlora"} and set(split.frozen) == {MODEL, "qlora"}
    stored = split.frozen[MODEL]
    flat_axes = _flat(logical_axes(cfg.model))
    assert {p for p, ax in flat_axes.items() if is_matrix(tuple(ax))} == MATRICES
    n_bytes = 0
    for path, w in _flat(base).items():
        node = stored
        for key in path.split("/"):
            node = node[key]
        if path in MATRICES:
            assert set(node) == {fmt, "scales"}, path
            assert node[fmt].dtype == CODE_DTYPE[fmt] and node["scales"].dtype == np.float32
            assert node[fmt].shape == (*w.shape[:-1], w.shape[-1] // (2 if fmt == "nf4" else 1))
            assert node["scales"].shape == (*w.shape[:-1], w.shape[-1] // 16)
            assert_codes_match(node, w, fmt, 16)
            n_bytes += w.size * (4 if fmt == "nf4" else 8) // 8 + w.size // 16 * 4
        else:  # norms stay float, untouched
            assert node is w, path
            n_bytes += w.size * 4
    assert stored_bytes(stored) == n_bytes
    float_bytes = sum(w.size * 4 for w in jax.tree.leaves(base))
    assert n_bytes < (0.3 if fmt == "nf4" else 0.35) * float_bytes  # tiny: norms are a larger share
    abstract = abstract_split(cfg, trainable_from_config(cfg))  # the run's layout agrees
    got = jax.tree.map(lambda x: (x.shape, x.dtype), abstract.frozen)
    assert got == jax.tree.map(lambda x: (x.shape, x.dtype), split.frozen)
    ax = abstract.frozen_axes[MODEL]["blocks"]["attn"]["o"]["w"]  # codes: the weight's axes
    assert tuple(ax[fmt]) == ("layers", "heads", "head_dim", "embed")
    assert tuple(ax["scales"]) == ("layers", "heads", "head_dim", None)


def _first_order_bound(cfg, f, base, stored, fmt):
    """|f(W + D) - f(W)| <= sum |df/dW| * |D| (first order; the mean value theorem's gradient
    taken as the larger of those at the two ends), with |D| <= the format's bound per value,
    quant.max_error * its block's absmax, plus 4 float32 ulps of the absmax for rounding."""
    deq = dequantize_tree(stored)
    grad = jax.jit(jax.grad(f))
    grads = [grad(base), grad(deq)]
    total = [0.0, 0.0]
    for path, w in _flat(base).items():
        if path not in MATRICES:
            continue
        node = stored
        for key in path.split("/"):
            node = node[key]
        absmax = np.repeat(np.asarray(node["scales"]), 16, axis=-1).reshape(w.shape)
        delta = absmax * (quant.max_error(fmt) + 4 * np.finfo(np.float32).eps)
        for i, g in enumerate(grads):
            total[i] += float(np.sum(np.abs(np.asarray(_flat(g)[path])) * delta))
    return max(total)


def test_zero_b_is_the_dequantised_base_exactly_and_near_the_float_base(tiny):
    batch = _batch()
    changes = {}
    for fmt in ("nf4", "int8"):
        cfg = tiny(*QLORA, f"peft.quant={fmt}")
        base = init_params(cfg.model, jax.random.key(0))
        split = _split(cfg, base)
        deq = dequantize_tree(split.frozen[MODEL])
        seen = jax.jit(model_params)(split.params, split.frozen)  # as the loss sees them
        for got, want in zip(jax.tree.leaves(seen), jax.tree.leaves(deq), strict=True):
            np.testing.assert_array_equal(got, want)  # dequantised in jit, + 0 * A @ B
        np.testing.assert_array_equal(_logits(cfg, seen), _logits(cfg, deq))
        loss = make_loss(cfg)

        def f(model, loss=loss):
            out = loss({MODEL: model}, {}, batch, None)
            return out.total / out.weight

        bound = _first_order_bound(cfg, f, base, split.frozen[MODEL], fmt)
        changes[fmt] = abs(float(jax.jit(f)(deq)) - float(jax.jit(f)(base)))
        assert 0 < changes[fmt] <= bound, (fmt, changes[fmt], bound)
    assert changes["int8"] < changes["nf4"]  # 8 bits are closer to the float base than 4


def test_training_changes_only_the_adapter_and_the_loss_falls(tiny):
    cfg = tiny("train.steps=6", *QLORA, "optim.lr=2e-2")
    kw = dict(train_batches=SyntheticBatches(8, 16), val_batches=_val)
    first = Trainer(cfg, **kw)
    before = jax.device_get(first.state)
    first.ckpt.close()
    result = train(cfg, **kw)
    state = result["state"]
    assert set(state.params) == {"qlora"}
    for got, want in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(before.frozen),
                         strict=True):  # fmt: skip
        np.testing.assert_array_equal(got, want)  # codes, scales, norms: bitwise unchanged
    q = state.frozen[MODEL]["blocks"]["attn"]["q"]["w"]
    assert q["nf4"].dtype == np.uint8  # what the run kept, not a float copy
    for leaf in jax.tree.leaves(state.params):
        assert np.any(leaf)  # every A and B moved off zero (B starts at zero)
    start, end = (_mean_loss(cfg, s.params, s.frozen) for s in (before, state))
    assert end < start - 0.05, (start, end)


def test_a_qlora_run_resumes_bitwise_and_loads_as_its_merged_model(tiny, tmp_path):
    from llm.checkpoint import load_model

    def run(run_dir, steps):
        cfg = tiny(f"train.steps={steps}", "train.ckpt_every=1", f"train.run_dir={run_dir}",
                   *QLORA, "peft.quant=int8")  # fmt: skip
        return train(cfg, train_batches=SyntheticBatches(8, 16), val_batches=_val)

    straight = run(tmp_path / "straight", 3)
    run(tmp_path / "split", 2)
    resumed = run(tmp_path / "split", 3)
    assert resumed["resumed_from"] == 2
    for tree in ("params", "frozen"):
        got, want = getattr(resumed["state"], tree), getattr(straight["state"], tree)
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, b)
    want = resumed["params"]  # the run's decoder: dequantised, adapter merged
    device = jax.sharding.SingleDeviceSharding(jax.devices()[1])  # as a warm start places it
    placed = load_model(tmp_path / "split", shardings=jax.tree.map(lambda _: device, want))
    loaded = load_model(tmp_path / "split")
    assert loaded.step == 3
    assert jax.tree.structure(loaded.params) == jax.tree.structure(want)
    for a, b, c in zip(*(jax.tree.leaves(t.params) for t in (loaded, placed)),
                       jax.tree.leaves(want), strict=True):  # fmt: skip
        assert a.dtype == np.float32 and b.sharding == device
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)
    stored = resumed["state"].frozen[MODEL]["blocks"]["attn"]["q"]["w"]
    assert not np.array_equal(
        loaded.params["blocks"]["attn"]["q"]["w"], quant.dequantize(stored)
    )  # fmt: skip  (A @ B merged in)
    np.testing.assert_array_equal(
        loaded.params["blocks"]["attn"]["k"]["w"],
        quant.dequantize(resumed["state"].frozen[MODEL]["blocks"]["attn"]["k"]["w"]),
    )


def test_a_warm_start_quantises_the_source_weights(tiny, tmp_path):
    """train.init_from: the Hugging Face source's float weights become the frozen codes."""
    from hf_models import make_hf_model, save_hf

    from llm.checkpoint import load_model

    hf_dir = save_hf(make_hf_model("llama"), tmp_path / "hf")  # head_dim 8, vocab 300
    cfg = tiny("train.steps=1", f"train.init_from={hf_dir}", *QLORA, "peft.quant_block=4")
    result = train(cfg, train_batches=SyntheticBatches(8, 16), val_batches=_val)
    source = load_model(hf_dir).params
    stored = result["state"].frozen[MODEL]
    for path, w in _flat(source).items():
        node = stored
        for key in path.split("/"):
            node = node[key]
        if isinstance(node, dict):
            assert_codes_match(node, w, "nf4", 4)
        else:
            np.testing.assert_array_equal(node, w, err_msg=path)
    assert isinstance(stored["lm_head"], dict)  # the untied head is a matrix too


def test_sharded_codes_follow_the_weight(tiny):
    from sharding_fixtures import preset_config

    from llm.sharding.init import make_plan
    from llm.sharding.mesh import make_mesh
    from llm.train.build import init_train_state, state_layout

    cfg = preset_config("fsdp_tp", *QLORA[:-1], "peft.quant_block=8")
    plan = make_plan(cfg, make_mesh(cfg.mesh))
    layout = state_layout(cfg, plan, trainable_from_config(cfg))
    state = init_train_state(cfg, layout)
    specs = layout.specs.frozen[MODEL]["blocks"]
    up = specs["mlp"]["up"]["w"]
    assert tuple(up["scales"]) == (*tuple(up["nf4"])[:-1], None)  # scales: last unsharded
    assert "fsdp" in tuple(up["nf4"]) and "tensor" in tuple(up["nf4"])
    codes = state.frozen[MODEL]["blocks"]["mlp"]["up"]["w"]["nf4"]
    assert codes.addressable_shards[0].data.size < codes.size  # really split


def test_bad_quantisation_settings_are_errors(tiny):
    with pytest.raises(ValueError, match=r"cannot quantise blocks/attn/k/w: .* multiple of "
                       r"block_size=64"):  # fmt: skip
        trainable_from_config(tiny("peft.method=qlora", "peft.quant_block=64"))
    with pytest.raises(ConfigError, match=r"peft\.quant_block: 15 must be even with quant=nf4"):
        tiny("peft.method=qlora", "peft.quant_block=15")
    with pytest.raises(ConfigError, match=r"peft\.quant_block: must be positive"):
        tiny("peft.method=qlora", "peft.quant_block=0")
    with pytest.raises(ConfigError, match=r"peft\.quant"):
        tiny("peft.method=qlora", "peft.quant=fp4")
