"""The `mlm` loss (llm/train/losses/mlm.py): its value against a NumPy cross-entropy over the
selected tokens, its validation metrics, its refusals, and a short training run whose
masked-token loss falls below what the byte frequencies alone give."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import pytest
from train_fixtures import TEXT, SyntheticBatches, tiny_config

from llm.config.base import ConfigError
from llm.data.objectives import mlm_mask
from llm.model import forward, init_params
from llm.tokenizers.byte import ByteTokenizer
from llm.train.loop import train
from llm.train.losses import make_loss
from llm.train.losses.mlm import MLMLoss
from llm.train.trainable import MODEL

ENCODER = ["model.vocab_size=260", "model.causal=false", "data.objective=mlm", "loss.name=mlm"]
MASK_ID = 259  # the byte tokenizer has no [MASK]: one past its 259 ids


class MLMBatches(SyntheticBatches):
    """SyntheticBatches with BERT's 80/10/10 masking, seeded by the batch index."""

    def __next__(self) -> dict[str, np.ndarray]:
        batch = super().__next__()
        rng = np.random.default_rng([self.seed, self.index, 7])
        return mlm_mask(batch, rng, rate=0.15, mask_id=MASK_ID, vocab_size=259,
                        special_ids=(0, 1, 2), pad_id=0)  # fmt: skip


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return tiny_config(tmp_path_factory.mktemp("mlm"), *ENCODER, "train.steps=60")


def numpy_ce(logits_BLV, targets_BL, mask_BL) -> float:
    """Sum over masked positions of -log softmax(logits)[target], in float64."""
    z = np.asarray(logits_BLV, np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, np.asarray(targets_BL)[..., None], -1)[..., 0]
    return float(-(picked * mask_BL).sum())


def test_loss_is_ce_of_the_masked_tokens(cfg):
    loss = make_loss(cfg)
    assert isinstance(loss, MLMLoss)
    params = init_params(cfg.model, jax.random.key(0))
    batch = next(MLMBatches(4, 16, seed=3))
    out = loss({MODEL: params}, {}, batch, None)
    logits = forward(cfg.model, params, batch["inputs"], segment_ids_BL=batch["segment_ids"],
                     positions_BL=batch["positions"]).logits_BLV  # fmt: skip
    want = numpy_ce(logits, batch["targets"], batch["loss_mask"])
    assert float(out.weight) == batch["loss_mask"].sum() > 0
    np.testing.assert_allclose(float(out.total), want, rtol=1e-5)
    np.testing.assert_allclose(float(out.metrics["ce"]), want, rtol=1e-5)
    # validation: the same mean, and accuracy from the arg-max at the masked positions
    val = loss.evaluate({MODEL: params}, {}, [batch], tokenizer=ByteTokenizer())
    np.testing.assert_allclose(val["loss"], want / batch["loss_mask"].sum(), rtol=1e-5)
    hits = (np.argmax(np.asarray(logits), -1) == batch["targets"]) * batch["loss_mask"]
    np.testing.assert_allclose(val["masked_accuracy"], hits.sum() / batch["loss_mask"].sum())
    assert val["bytes"] == batch["loss_mask"].sum()  # each masked byte decodes to one byte


def test_mlm_refuses_what_it_cannot_train(cfg, tmp_path):
    with pytest.raises(ValueError, match=r"model\.causal=false"):
        MLMLoss(dataclasses.replace(cfg.model, causal=True))
    tok, batches = ByteTokenizer(), MLMBatches(8, 16)
    wrong = (
        ("data.objective", [*ENCODER, "data.objective=causal"]),
        ("model.causal", ["model.causal=false", "loss.name=causal_lm"]),
    )
    for key, overrides in wrong:
        bad = tiny_config(tmp_path / key, *overrides, "train.steps=1")
        with pytest.raises(ConfigError, match=key):
            train(bad, train_batches=batches, val_batches=lambda: [], tokenizer=tok)


def unigram_entropy() -> float:
    """Nats per byte of TEXT's byte frequencies: the loss of a model that ignores context."""
    counts = np.bincount(np.frombuffer(TEXT.encode(), np.uint8))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_training_fills_masks_from_context(cfg):
    val = [next(MLMBatches(8, 16, seed=99)) for _ in range(2)]
    result = train(cfg, train_batches=MLMBatches(8, 16), val_batches=lambda: val,
                   tokenizer=ByteTokenizer())  # fmt: skip
    metrics = make_loss(cfg).evaluate({MODEL: result["params"]}, {}, val, tokenizer=ByteTokenizer())
    assert metrics["loss"] < unigram_entropy() < math.log(260), metrics
