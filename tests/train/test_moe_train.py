"""The tiny mixture-of-experts preset (configs/moe_tiny.yaml) trains through `llm.train.train`
on the default corpus: the loss falls and both router losses are logged as metrics."""

import json
import math
from pathlib import Path

import pytest

from llm.config import load_config
from llm.train import train
from llm.train.losses import make_loss

PRESET = Path(__file__).parents[2] / "configs" / "moe_tiny.yaml"
SHORT = ["train.steps=40", "train.batch_size=8", "train.seq_len=32", "train.log_every=1",
         "train.eval_every=0", "train.ckpt_every=0", "train.async_checkpointing=false",
         "train.progress_bar=false", "train.tensorboard=false", "eval.batches=2",
         "optim.warmup_steps=5"]  # fmt: skip


@pytest.mark.slow  # 40 steps + a 2-batch evaluation: ~25 s on a quiet machine, more under load
def test_moe_tiny_trains_and_logs_router_losses(tmp_path):
    cfg = load_config(PRESET, [*SHORT, f"train.run_dir={tmp_path}"])
    assert cfg.model.n_experts == 4 and cfg.model.capacity_factor is None
    out = train(cfg)
    assert math.isfinite(out["loss"])
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    train_rows = [r for r in records if r["split"] == "train"]
    first, last = train_rows[0], train_rows[-1]
    # from ln(259) = 5.56 nats at init; 40 steps of bytes reach ~3.3 (measured 3.2-3.4)
    assert last["ce"] < first["ce"] - 1.5, (first["ce"], last["ce"])
    for row in (first, last):  # 2 layers x 0.01 x E sum f_e P_e, which lies in (0, E = 4]
        assert 0 < row["moe_lb"] <= 2 * 0.01 * 4, row["moe_lb"]
        assert row["moe_z"] > 0
        # the logged loss is cross-entropy plus both router losses
        assert math.isclose(row["loss"], row["ce"] + row["moe_lb"] + row["moe_z"], rel_tol=1e-5)


def test_losses_that_drop_aux_losses_refuse_router_weights():
    """DPO reads no `aux_losses`: the router losses would vanish, so they must be zeroed."""
    cfg = load_config(PRESET, ["loss.name=dpo"])
    with pytest.raises(ValueError, match=r"moe_lb_weight / moe_z_weight: loss 'dpo' does not"):
        make_loss(cfg)
    off = load_config(PRESET, ["loss.name=dpo", "model.moe_lb_weight=0", "model.moe_z_weight=0"])
    assert make_loss(off).name == "dpo"
    assert make_loss(load_config(PRESET, [])).name == "causal_lm"
