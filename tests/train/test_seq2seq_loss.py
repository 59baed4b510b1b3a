"""The seq2seq loss (llm/train/losses/seq2seq.py) against a fake encoder-decoder: sums equal a
cross-entropy computed by hand in numpy, aux losses are added per token, validation's bits per
byte skip sentinels; the registry refuses a decoder-only arch."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from llm.config import ModelConfig, load_config
from llm.model.outputs import ModelOutput
from llm.tokenizers import ByteTokenizer
from llm.train.losses import Seq2SeqLoss, make_loss

TOK = ByteTokenizer()
V, D = 264, 8  # 259 byte ids + 5 sentinels
S0, S1, BOS, EOS, PAD = 259, 260, TOK.bos_id, TOK.eos_id, TOK.pad_id


def fake_forward(cfg, params, enc_BS, dec_BT, *, encoder_segment_ids_BS,
                 decoder_segment_ids_BL, dropout_key):  # fmt: skip
    """Logits = (E[dec] + mean of E[source]) E^T, and a constant aux loss of 0.5."""
    del cfg, decoder_segment_ids_BL, dropout_key
    E = params["embed"]
    m = encoder_segment_ids_BS[..., None].astype(jnp.float32)
    ctx_BD = jnp.sum(E[enc_BS] * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)
    h_BTD = E[dec_BT] + ctx_BD[:, None]
    return ModelOutput(
        logits_BLV=h_BTD @ E.T, hidden_BLD=h_BTD, aux_losses={"lb": jnp.float32(0.5)}
    )


def numpy_logits(E, batch):
    """The fake model's logits, in float64 numpy: [B, T, V]."""
    m = batch["encoder_segment_ids"][..., None].astype(np.float64)
    ctx = (E[batch["encoder_inputs"]] * m).sum(1) / np.maximum(m.sum(1), 1.0)
    return (E[batch["inputs"]] + ctx[:, None]) @ E.T


def numpy_ce(E, batch):
    """Per-token cross-entropy of the fake model: [B, T]."""
    logits = numpy_logits(E, batch)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, batch["targets"][..., None], -1)[..., 0]
    return logz - picked


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    E = rng.normal(size=(V, D)).astype(np.float32)
    batch = {
        "encoder_inputs": np.array([[72, 105, S0, 33, PAD], [97, S1, PAD, PAD, PAD]], np.int32),
        "encoder_segment_ids": np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], np.int32),
        "inputs": np.array([[BOS, S0, 104, 101, PAD], [BOS, S1, 98, 99, 100]], np.int32),
        "targets": np.array([[S0, 104, 101, EOS, PAD], [S1, 98, 99, 100, EOS]], np.int32),
        "segment_ids": np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], np.int32),
        "loss_mask": np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], np.float32),
    }
    loss = Seq2SeqLoss(ModelConfig(vocab_size=V, d_model=D), forward=fake_forward)
    return loss, {"model": {"embed": jnp.asarray(E)}}, E, batch


def test_loss_equals_hand_computed_cross_entropy(setup):
    loss, params, E, batch = setup
    out = loss(params, {}, {k: jnp.asarray(v) for k, v in batch.items()}, None)
    ce = float((numpy_ce(E.astype(np.float64), batch) * batch["loss_mask"]).sum())
    assert float(out.weight) == 9.0
    np.testing.assert_allclose(float(out.metrics["ce"]), ce, rtol=1e-5)
    np.testing.assert_allclose(float(out.total), ce + 0.5 * 9, rtol=1e-5)  # aux per token
    np.testing.assert_allclose(float(out.metrics["lb"]), 0.5 * 9, rtol=1e-6)


def test_evaluate_bits_per_target_byte(setup):
    loss, params, E, batch = setup
    m = loss.evaluate(params, {}, [batch], tokenizer=TOK)
    nats = float((numpy_ce(E.astype(np.float64), batch) * batch["loss_mask"]).sum())
    # bytes: "he" and "bcd"; sentinels 259/260 and EOS decode to none
    assert m["bytes"] == 5 and m["weight"] == 9
    np.testing.assert_allclose(m["loss"], nats / 9, rtol=1e-5)
    np.testing.assert_allclose(m["bpb"], nats / math.log(2) / 5, rtol=1e-5)
    np.testing.assert_allclose(m["ppl"], math.exp(nats / 9), rtol=1e-5)
    hits = numpy_logits(E.astype(np.float64), batch).argmax(-1) == batch["targets"]
    np.testing.assert_allclose(m["accuracy"], (hits * batch["loss_mask"]).sum() / 9, rtol=1e-6)


def test_registry_refuses_a_decoder():
    cfg = load_config(None, ["loss.name=seq2seq"])
    with pytest.raises(ValueError, match=r"loss\.name=seq2seq trains an encoder-decoder"):
        make_loss(cfg)
