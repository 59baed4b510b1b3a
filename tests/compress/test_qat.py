"""Quantization-aware training (llm/compress/qat.py): straight-through gradients, the QAT
forward equal to the RTN model's, the config's refusals, and a run that saves and resumes."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))

from train_fixtures import SyntheticBatches, tiny_config

from llm.checkpoint import load_model
from llm.compress.qat import COMPONENT, QatSpec, apply_qat, qat_spec
from llm.config import ConfigError, ModelConfig, load_config
from llm.config.sections import QAT_BITS
from llm.model import forward, init_params
from llm.model.quantized import quantize_params
from llm.ops import quantized
from llm.ops.cross_entropy import cross_entropy_plain
from llm.train import train
from llm.train.trainable import model_params, trainable_from_config

CFG = ModelConfig(vocab_size=259, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=32)
FORMATS = [("int8", 8, 0), ("int4", 3, 16), ("uint4", 4, 16), ("nf4", 4, 32)]


def _batch():
    return next(iter(SyntheticBatches(2, 16)))


@jax.jit
def _logits(weights, inputs_BL):
    return forward(CFG, weights, inputs_BL).logits_BLV


def _ce(cfg, weights, batch):
    logits = forward(cfg, weights, batch["inputs"]).logits_BLV
    return cross_entropy_plain(logits, batch["targets"], batch["loss_mask"])[1]


@pytest.mark.parametrize(("fmt", "bits", "group"), FORMATS)
def test_qat_forward_equals_the_rtn_model(fmt, bits, group):
    params = init_params(CFG, jax.random.key(0))
    spec = qat_spec(CFG, fmt=fmt, bits=bits, group=group)
    batch = _batch()
    fake = _logits(apply_qat(params, spec), batch["inputs"])
    rtn = quantize_params(CFG, params, fmt=fmt, bits=bits, group=group)
    served = _logits(rtn, batch["inputs"])
    np.testing.assert_allclose(fake, served, rtol=1e-5, atol=1e-5)
    # and the fake-quantized weight is the dequantized RTN weight exactly
    w_fake = apply_qat(params, spec)["blocks"]["mlp"]["down"]["w"]
    w_rtn = quantized.dequantize(rtn["blocks"]["mlp"]["down"]["w"])
    np.testing.assert_allclose(w_fake, w_rtn, rtol=1e-6, atol=1e-7)  # w + (d - w) rounds once
    assert not np.allclose(w_fake, params["blocks"]["mlp"]["down"]["w"])  # really rounded


def test_qat_gradient_is_the_straight_through_estimator():
    """d loss / d w under QAT = d loss / d w' evaluated at w' = RTN(w), for every weight."""
    params = init_params(CFG, jax.random.key(1))
    spec = qat_spec(CFG, fmt="int4", bits=4, group=16)
    batch = _batch()
    grad = jax.jit(jax.grad(lambda p: _ce(CFG, p, batch)))
    g_qat = jax.jit(jax.grad(lambda p: _ce(CFG, apply_qat(p, spec), batch)))(params)
    g_at_rounded, g_float = grad(apply_qat(params, spec)), grad(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g_qat,
                 g_at_rounded)  # fmt: skip
    w = ("blocks", "attn", "q", "w")
    pick = lambda t: t[w[0]][w[1]][w[2]][w[3]]  # noqa: E731
    assert not np.allclose(pick(g_qat), pick(g_float), rtol=1e-3)  # not the float gradient


def test_spec_has_no_leaves_and_is_static_under_jit():
    spec = qat_spec(CFG, fmt="int4", bits=4, group=16)
    assert jax.tree.leaves(spec) == []
    names = {p for p, *_ in spec.layouts}
    assert {"blocks/attn/q/w", "blocks/attn/o/w", "blocks/mlp/up/w", "blocks/mlp/down/w"} <= names
    assert all(p.startswith("blocks/") for p in names)  # embeddings and head stay float
    params = init_params(CFG, jax.random.key(0))
    out = jax.jit(lambda p, f: model_params(p, f))({"model": params}, {COMPONENT: spec})
    np.testing.assert_array_equal(out["blocks"]["attn"]["q"]["w"],
                                  apply_qat(params, spec)["blocks"]["attn"]["q"]["w"])  # fmt: skip


def test_config_bits_table_matches_the_formats():
    for fmt, allowed in QAT_BITS.items():
        for bits in range(1, 9):
            ok = bits in allowed
            try:
                quantized.code_range(fmt, bits)
                assert ok, (fmt, bits)
            except ValueError:
                assert not ok, (fmt, bits)


def test_bad_qat_configs_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.qat\.bits: int8 takes bits"):
        load_config(None, ["train.qat.fmt=int8", "train.qat.bits=4"])
    with pytest.raises(ValueError, match="matches no quantizable weight"):
        trainable_from_config(tiny_config(tmp_path, "train.qat.fmt=int4", "train.qat.targets=nope"))
    with pytest.raises(ValueError, match="group 48 does not divide"):
        trainable_from_config(tiny_config(tmp_path, "train.qat.fmt=int4", "train.qat.group=48"))
    with pytest.raises(ValueError, match=r"train\.qat with peft\.method=lora"):
        trainable_from_config(tiny_config(tmp_path, "train.qat.fmt=int4", "peft.method=lora"))
    with pytest.raises(ValueError, match="takes bits"):
        QatSpec("nf4", 3, 16, (("blocks/attn/q/w", 1, 1),))


@pytest.mark.slow  # two short runs with compiles: ~80 s on a loaded 2-core VM
def test_qat_run_resumes_and_rtn_of_its_weights_serves_its_forward(tmp_path):
    qat = ["train.qat.fmt=int4", "train.qat.group=16", "train.ckpt_every=2"]
    val = lambda: list(SyntheticBatches(8, 16, seed=99, limit=1))  # noqa: E731
    train(tiny_config(tmp_path, "train.steps=2", *qat), train_batches=SyntheticBatches(8, 16),
          val_batches=val)  # fmt: skip
    cfg = tiny_config(tmp_path, "train.steps=4", *qat)
    result = train(cfg, train_batches=SyntheticBatches(8, 16), val_batches=val)
    assert result["resumed_from"] == 2 and result["step"] == 4  # the leafless spec restores
    state = result["state"]
    assert isinstance(state.frozen[COMPONENT], QatSpec)
    batch = _batch()
    qat_logits = forward(cfg.model, model_params(state.params, state.frozen), batch["inputs"])
    loaded = load_model(tmp_path)  # the float shadow weights, as `llm quantize` reads them
    rtn = quantize_params(cfg.model, loaded.params, fmt="int4", bits=4, group=16)
    served = forward(cfg.model, rtn, batch["inputs"])
    np.testing.assert_allclose(qat_logits.logits_BLV, served.logits_BLV, rtol=1e-5, atol=1e-5)
    assert jnp.all(jnp.isfinite(served.logits_BLV))
