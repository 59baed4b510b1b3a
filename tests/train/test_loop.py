"""The training driver: divergence aborts safely, evaluation metrics, end-to-end in process."""

import json
import math

import jax
import numpy as np
import pytest
from train_fixtures import SyntheticBatches

from llm.checkpoint import Checkpointer
from llm.config import ConfigError
from llm.tokenizers import ByteTokenizer
from llm.train.evaluate import evaluate
from llm.train.loop import TrainingDiverged, train
from llm.train.losses import CausalLMLoss
from llm.train.optim import param_paths


class PoisonAt(SyntheticBatches):
    """Synthetic batches whose batch number `at` (1-based) has a NaN in the loss mask."""

    def __init__(self, at: int):
        super().__init__(8, 16)
        self.at = at

    def __next__(self):
        batch = super().__next__()
        if self.index == self.at:
            batch["loss_mask"] = batch["loss_mask"].copy()
            batch["loss_mask"][0, 0] = np.nan
        return batch


def _val():
    return SyntheticBatches(8, 16, seed=1, limit=2)


def test_nan_aborts_and_keeps_the_last_good_checkpoint(tiny):
    # Metrics are only fetched every 100 steps, so the NaN at step 13 is first seen when the
    # checkpoint of step 15 is due: that checkpoint must not be written.
    cfg = tiny("train.steps=30", "train.ckpt_every=5", "train.log_every=100")
    with pytest.raises(TrainingDiverged, match="non-finite training at step 13: loss=nan"):
        train(cfg, train_batches=PoisonAt(13), val_batches=_val)
    ckpt = Checkpointer(cfg.train.run_dir, keep=3)
    assert ckpt.steps() == [5, 10]
    restored = ckpt.restore(_like(cfg))
    ckpt.close()
    assert restored.step == 10 and restored.data_state == {"next_batch": 10}
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored.state.params))
    logged = [json.loads(line)["step"] for line in open(cfg.train.run_dir + "/metrics.jsonl")]
    assert logged == list(range(1, 13))  # steps before the bad one are logged, none after


def _like(cfg):
    from llm.sharding import make_mesh
    from llm.sharding.init import make_plan
    from llm.train.build import state_layout
    from llm.train.trainable import Trainable

    return state_layout(cfg, make_plan(cfg, make_mesh(cfg.mesh)), Trainable()).abstract_sharded()


def test_train_end_to_end_and_evaluate(tiny):
    cfg = tiny("train.steps=40", "train.eval_every=20", "train.ckpt_every=20", "train.log_every=10")
    result = train(cfg, train_batches=SyntheticBatches(8, 16), val_batches=_val)
    assert result["step"] == 40 and result["stopped"] is None
    records = [json.loads(line) for line in open(cfg.train.run_dir + "/metrics.jsonl")]
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert train_losses[-1] < train_losses[0] - 1.0
    for key in ("grad_norm", "param_norm", "lr", "tokens_per_s", "step_s", "mfu", "ppl"):
        assert key in records[0], key
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [20, 40]
    # Byte tokens: one byte per target, so bits/byte is the loss in bits.
    m = evaluate(cfg.model, result["params"], _val(), ByteTokenizer())
    assert m["bytes"] == m["tokens"] == 2 * 8 * 16
    assert m["bpb"] == pytest.approx(m["loss"] / math.log(2), rel=1e-12)
    assert m["ppl"] == pytest.approx(math.exp(m["loss"]), rel=1e-12)
    assert m["loss"] == pytest.approx(val[-1]["loss"], rel=1e-6)
    assert (tmp := cfg.train.run_dir) and (open(tmp + "/config.yaml").read().count("run_dir") == 1)
    assert len(jax.tree.leaves(param_paths(result["params"]))) > 0


def test_data_that_cannot_train_is_refused_before_step_1(tiny):
    mlm = tiny("data.objective=mlm")
    with pytest.raises(ConfigError, match=r"data.objective: 'mlm' .* loss.name='causal_lm'"):
        train(mlm, train_batches=SyntheticBatches(8, 16), tokenizer=ByteTokenizer())

    class MaskedLoss(CausalLMLoss):  # a loss that takes masked batches: the mask id is checked
        name = "masked_test"

    with pytest.raises(ValueError, match=r"mask id 259 .* outside model.vocab_size=259"):
        train(mlm, train_batches=SyntheticBatches(8, 16), tokenizer=ByteTokenizer(),
              loss=MaskedLoss(mlm.model))  # fmt: skip
