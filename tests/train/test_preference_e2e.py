"""End to end: `llm.train.train` with a direct preference loss raises the held-out margin.

A tiny byte model (tests/train/train_fixtures.py) learns the toy preference of
preference_fixtures.py: the chosen completion is a Shakespeare fragment as written, the
rejected one the same fragment in upper case. DPO reads it through the real data path
(JSONL, `data.format=preference`, a quarter of the records held out); the other losses read
fixture batches whose prompts come from the first two thirds of the text and are validated on
pairs from the last third. The step-0 metrics are those of the run's own starting point:
`init_train_state` draws the decoder from `train.seed`, and the reference is its copy. Fixed
seeds throughout; the thresholds sit well inside what these runs reach (values measured on
them are in the comments).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from preference_fixtures import (
    PAIR_OVERRIDES,
    Batches,
    case_pairs,
    kto_batch,
    split_batches,
    tokenizer,
    write_case_jsonl,
)
from train_fixtures import tiny_config

from llm.data import make_batches
from llm.model import init_params
from llm.train import train
from llm.train.losses import make_loss
from llm.train.trainable import MODEL, REFERENCE


def _run(tmp_path, name: str, make, steps: int = 12, *overrides: str):
    """(step-0 validation metrics, final ones, the run's summary, the step-0 decoder)."""
    tok = tokenizer()
    train_data = make(tok, 64, seed=0)
    val = split_batches(make(tok, 16, seed=1, held_out=True), 8)
    cfg = tiny_config(
        tmp_path, *PAIR_OVERRIDES, f"loss.name={name}", f"train.steps={steps}", *overrides
    )
    loss = make_loss(cfg)
    start = {MODEL: init_params(cfg.model, jax.random.key(cfg.train.seed))}  # the run's step 0
    frozen = {REFERENCE: start} if loss.reference else {}
    before = loss.evaluate(start, frozen, iter(val))
    out = train(
        cfg,
        train_batches=Batches(train_data, cfg.train.batch_size),
        val_batches=lambda: iter(val),
        loss=loss,
        tokenizer=tok,
    )
    assert out["step"] == steps
    return before, out["val"], out, start[MODEL]


def test_dpo_through_the_data_pipeline_raises_the_held_out_margin_with_bounded_kl(tmp_path):
    """The real data path: JSONL records -> llm/data/preference.py rows -> make_batches."""
    n = write_case_jsonl(tmp_path / "pairs.jsonl")
    data = [f"data.corpus={tmp_path / 'pairs.jsonl'}", "data.format=preference"]
    data += ["data.eval_corpus=null", "data.val_fraction=0.25", "eval.batches=4"]
    cfg = tiny_config(tmp_path / "run", *PAIR_OVERRIDES, "loss.name=dpo", "train.steps=12", *data)
    tok = tokenizer()
    loss = make_loss(cfg)
    start = {MODEL: init_params(cfg.model, jax.random.key(cfg.train.seed))}  # the run's step 0
    before = loss.evaluate(start, {REFERENCE: start}, make_batches(cfg, "validation", tok))
    assert before["weight"] == round(0.25 * n)  # every held-out record, padding weighs 0
    # policy == reference at step 0: margin 0, accuracy 0 (margin > 0 is strict), loss log 2
    assert before["margin"] == 0.0 and before["accuracy"] == 0.0
    np.testing.assert_allclose(before["loss"], np.log(2.0), rtol=1e-6)
    out = train(cfg, loss=loss, tokenizer=tok)
    after = out["val"]
    # measured: margin 1.80, accuracy 1.0, loss 0.163, kl 0.65 nats/token (15 held-out pairs)
    assert after["margin"] > 1.0 and after["accuracy"] >= 0.9 and after["loss"] < 0.4
    assert after["rewards/chosen"] > 0 > after["rewards/rejected"]
    assert 0 < after["kl"] < 3.0  # the chosen answers gained, the policy did not run away
    reference = out["state"].frozen[REFERENCE][MODEL]  # still the step-0 decoder
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(start[MODEL]), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["simpo", "orpo"])
def test_reference_free_losses_raise_the_held_out_margin(tmp_path, name):
    before, after, out, _ = _run(tmp_path, name, case_pairs)
    assert REFERENCE not in out["state"].frozen  # nothing kept for a reference-free loss
    assert "kl" not in after
    # measured: simpo margin 0.041 -> 1.65, accuracy 0.81 -> 1.0, loss 1.28 -> 0.42; orpo
    # log-odds ratio 0.021 -> 0.56, accuracy 0.81 -> 1.0, loss 5.62 -> 4.57
    assert after["margin"] > before["margin"] + 0.3
    assert after["accuracy"] >= 0.9 and after["loss"] < before["loss"]


def test_kto_raises_the_held_out_reward_margin(tmp_path):
    before, after, _, _ = _run(tmp_path, "kto", kto_batch)
    assert before["margin"] == 0.0 and before["accuracy"] == 0.0
    np.testing.assert_allclose(before["loss"], 0.5, rtol=1e-6)  # lam (1 - sigmoid(0))
    # measured: margin 0.99, accuracy 1.0, loss 0.381 (z0 5.6 nats) after 12 steps
    assert after["margin"] > 0.5 and after["accuracy"] >= 0.75 and after["loss"] < 0.45
    assert after["rewards/chosen"] > after["rewards/rejected"]
