"""Quantized params in the model (llm/model/quantized.py): the forward pass consumes QArrays,
and a quantized model directory saves and loads them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.checkpoint import load_model
from llm.checkpoint.load import quantization_of
from llm.config import Config, DataConfig, TrainConfig
from llm.interop.model_dir import save_model
from llm.model import abstract_params, forward, logical_axes, unstack_layers
from llm.model import quantized as mq
from llm.ops import quantized as q
from llm.train.warm_start import warm_start_config
from tests.model.conftest import make_cfg, params_for

ALL = mq.BLOCK_LINEARS + "|" + mq.EMBEDDINGS


def _dequantized(params):
    return jax.tree.map(lambda x: q.dequantize(x) if q.is_qarray(x) else x, params,
                        is_leaf=q.is_qarray)  # fmt: skip


@pytest.mark.parametrize(
    "overrides,fmt,bits,group",
    [
        (dict(), "int8", 8, 0),
        (dict(n_kv_heads=2, tie_embeddings=False, vocab_size=64), "int4", 4, 16),
        (dict(activation="swiglu", norm="rmsnorm"), "uint4", 3, 8),
        (dict(tie_embeddings=True), "nf4", 4, 16),
    ],
)
def test_forward_on_qarrays_equals_forward_on_their_dequantized_floats(
    overrides, fmt, bits, group, tokens_BL
):
    cfg = make_cfg(**overrides)
    params = params_for(cfg)
    qp = mq.quantize_params(cfg, params, fmt=fmt, bits=bits, group=group, targets=ALL)
    n_weights = sum(1 for p in mq.weight_layouts(cfg))
    assert len(mq.manifest(qp)) == n_weights  # every Linear weight and the embeddings
    got = forward(cfg, qp, tokens_BL).logits_BLV
    want = forward(cfg, _dequantized(qp), tokens_BL).logits_BLV
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    decode = forward(cfg, unstack_layers(qp), tokens_BL).logits_BLV  # per-layer layout
    np.testing.assert_allclose(np.asarray(decode), np.asarray(got), rtol=1e-5, atol=1e-5)
    # quantization changed the model (the float weights are not read behind our back)
    assert not np.allclose(np.asarray(got), np.asarray(forward(cfg, params, tokens_BL).logits_BLV))


def test_weight_layouts_name_every_linear_weight():
    cfg = make_cfg(activation="swiglu", tie_embeddings=False)
    layouts = mq.weight_layouts(cfg)
    flat = jax.tree_util.tree_flatten_with_path(abstract_params(cfg))[0]
    matrices = {mq.path_of(p) for p, _ in flat if mq.path_of(p).endswith("/w")}
    assert {p for p in layouts if p.endswith("/w")} == matrices
    assert layouts["blocks/attn/o/w"] == (2, 1) and layouts["blocks/attn/q/w"] == (1, 2)
    assert layouts["token_embed"] == (1, 0) and layouts["lm_head"] == (1, 1)


def test_abstract_tree_and_axes_follow_the_manifest():
    cfg = make_cfg(n_kv_heads=2)
    qp = mq.quantize_params(cfg, params_for(cfg), fmt="uint4", bits=4, group=16)
    spec = mq.manifest(qp)
    abstract = mq.abstract_quantized(abstract_params(cfg), spec)
    assert jax.tree.structure(abstract) == jax.tree.structure(qp)
    for a, b in zip(jax.tree.leaves(abstract), jax.tree.leaves(qp), strict=True):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
    axes = mq.quantized_axes(logical_axes(cfg), spec)
    o = axes["blocks"]["attn"]["o"]["w"]  # [layers, heads, head_dim, embed]
    assert tuple(o.codes) == ("layers", "heads", "head_dim", "embed")
    assert tuple(o.scales) == ("layers", None, "embed") and tuple(o.offsets) == tuple(o.scales)
    back = mq.from_storable(mq.storable(qp), spec)
    assert jax.tree.structure(back) == jax.tree.structure(qp)


def test_quantized_model_directory_round_trip(tmp_path, tokens_BL):
    cfg = make_cfg()
    qp = mq.quantize_params(cfg, params_for(cfg), fmt="int4", bits=4, group=16, targets=ALL)
    data = DataConfig(tokenizer="byte", corpus="milton")
    saved = save_model(tmp_path / "q", cfg, qp, tokenizer_files={}, source={}, data=data)
    assert saved.data == data  # the source's data section is kept
    assert quantization_of(tmp_path / "q") == mq.manifest(qp)
    loaded = load_model(tmp_path / "q")
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(qp), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    got = forward(cfg, loaded.params, tokens_BL).logits_BLV
    np.testing.assert_array_equal(
        np.asarray(got), np.asarray(forward(cfg, qp, tokens_BL).logits_BLV)
    )
    # training starts from float weights: a warm start from it is refused by name
    train = TrainConfig(init_from=str(tmp_path / "q"), run_dir=str(tmp_path / "r"), seq_len=16)
    run = Config(model=cfg, data=DataConfig(tokenizer="byte"), train=train)
    with pytest.raises(ValueError, match="quantized model"):
        warm_start_config(run)


def test_unknown_manifest_path_is_an_error():
    cfg = make_cfg()
    spec = mq.manifest(mq.quantize_params(cfg, params_for(cfg), fmt="int8", bits=8, group=0))
    spec["blocks/attn/nope/w"] = spec["blocks/attn/q/w"]
    with pytest.raises(ValueError, match="nope"):
        mq.abstract_quantized(abstract_params(cfg), spec)


def test_param_bytes_shrink_with_the_format():
    cfg = make_cfg(d_model=64, d_ff=128)
    params = params_for(cfg)
    f32 = mq.param_bytes(params)
    i8 = mq.param_bytes(mq.quantize_params(cfg, params, fmt="int8", bits=8, group=0, targets=ALL))
    i4 = mq.param_bytes(mq.quantize_params(cfg, params, fmt="int4", bits=4, group=32, targets=ALL))
    assert i4 < i8 < f32 / 3
    assert mq.param_bytes(jnp.zeros((3, 4))) == 48
