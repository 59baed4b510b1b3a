"""The SFT loss: golden sums, packed examples equal examples alone, a tiny run that learns."""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llm.config import load_config
from llm.config.loss import LOSS_CONFIGS
from llm.data.sft import pack_examples, render
from llm.model import forward
from llm.tokenizers import ByteTokenizer
from llm.train import train
from llm.train.losses import LOSSES, SFTLoss, make_loss
from llm.train.trainable import MODEL
from tests.data.sft_fixtures import CONVERSATION, toy_chats, write_jsonl
from tests.model.conftest import make_cfg, params_for

TOK = ByteTokenizer()
CFG = make_cfg(vocab_size=TOK.vocab_size, max_seq_len=256)


def chats():
    """Three conversations of different shapes: multi-turn with a system prompt, two pairs."""
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    other = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    return [render(TOK, m) for m in (CONVERSATION, short, other)]


def as_batch(rows):
    return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


def test_sums_equal_optax_over_assistant_tokens():
    examples = chats()
    L = sum(len(ex.ids) for ex in examples) + 5
    batch = as_batch(pack_examples(examples, L, TOK.pad_id))
    params = {MODEL: params_for(CFG)}
    loss = SFTLoss(CFG)
    out = loss(params, {}, batch, None)
    logits = forward(
        CFG,
        params[MODEL],
        batch["inputs"],
        positions_BL=batch["positions"],
        segment_ids_BL=batch["segment_ids"],
    ).logits_BLV
    # reference: optax's integer-label cross-entropy, summed where the next token is assistant
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    mask = np.asarray(batch["loss_mask"])
    assert mask.sum() == sum(int(ex.mask[1:].sum()) for ex in examples)
    np.testing.assert_allclose(out.total, np.sum(np.asarray(ce) * mask), rtol=1e-5)
    assert float(out.weight) == mask.sum()
    metrics = loss.evaluate(params, {}, [{k: np.asarray(v) for k, v in batch.items()}])
    hits = (np.argmax(np.asarray(logits), -1) == np.asarray(batch["targets"])) * mask
    assert metrics["loss"] == pytest.approx(float(np.sum(np.asarray(ce) * mask) / mask.sum()))
    assert metrics["accuracy"] == pytest.approx(float(hits.sum() / mask.sum()))
    assert metrics["weight"] == mask.sum()


def test_packed_examples_equal_examples_alone():
    """Logits and loss of each example packed with others equal those of the example alone."""
    examples = chats()
    L = sum(len(ex.ids) for ex in examples) + 3
    (row,) = pack_examples(examples, L, TOK.pad_id)
    params = {MODEL: params_for(CFG)}
    packed = forward(
        CFG,
        params[MODEL],
        jnp.asarray(row["inputs"][None]),
        positions_BL=jnp.asarray(row["positions"][None]),
        segment_ids_BL=jnp.asarray(row["segment_ids"][None]),
    ).logits_BLV[0]
    loss, alone_total = SFTLoss(CFG), 0.0
    for s, ex in enumerate(examples, 1):
        alone = forward(CFG, params[MODEL], jnp.asarray(ex.ids[None])).logits_BLV[0]
        at = np.flatnonzero(row["segment_ids"] == s)
        np.testing.assert_allclose(packed[at], alone, atol=1e-5, rtol=1e-5)
        (single,) = pack_examples([ex], len(ex.ids), TOK.pad_id)
        alone_total += float(loss(params, {}, as_batch([single]), None).total)
    together = float(loss(params, {}, as_batch([row]), None).total)
    assert together == pytest.approx(alone_total, rel=1e-5)


def test_every_loss_config_has_a_registered_builder():
    assert set(LOSS_CONFIGS) == set(LOSSES)


def test_loss_name_sft_builds_from_config():
    cfg = load_config(None, ["loss.name=sft", "loss.z_loss=1e-4", "loss.chunk_size=8"])
    loss = make_loss(cfg)
    assert isinstance(loss, SFTLoss) and loss.name == "sft"
    assert (loss.z_loss, loss.chunk_size) == (1e-4, 8)


def test_tiny_sft_run_lowers_assistant_loss(tiny, tmp_path):
    corpus = write_jsonl(tmp_path / "chat.jsonl", toy_chats(12))
    cfg = tiny(
        f"data.corpus={corpus}",
        "data.format=chat",
        "data.val_fraction=0",
        "data.read_threads=0",
        "loss.name=sft",
        "model.max_seq_len=128",
        "train.seq_len=96",
        "train.batch_size=8",
        "train.steps=60",
        "train.eval_every=60",
        "train.log_every=1",
    )
    # the repeated toy set is its own validation set: the run should memorise its answers
    val = lambda: [as_np(b) for b in train_rows(cfg)]  # noqa: E731
    result = train(cfg, tokenizer=TOK, val_batches=val)
    records = [json.loads(line) for line in open(cfg.train.run_dir + "/metrics.jsonl")]
    first = next(r for r in records if r["split"] == "train")
    assert first["loss"] == pytest.approx(math.log(TOK.vocab_size), abs=0.5)  # untrained
    assert result["val"]["loss"] < first["loss"] - 3.0
    assert result["val"]["accuracy"] > 0.6  # measured 0.71 (chance: 1/259)


def train_rows(cfg):
    """The training rows, padded to whole batches of 8 (padding rows carry no loss)."""
    from llm.data.sft import padding_row, sft_rows

    rows, _, _ = sft_rows(cfg, "train", TOK)
    rows += [padding_row(cfg.train.seq_len, TOK.pad_id)] * (-len(rows) % 8)
    return [rows[i : i + 8] for i in range(0, len(rows), 8)]


def as_np(rows):
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
