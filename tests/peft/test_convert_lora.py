"""`llm convert to-hf` of a LoRA run writes the *merged* model: transformers loads it and gives
the logits of our merged forward (tiny random Llama base, float32)."""

from __future__ import annotations

import numpy as np
from hf_models import hf_logits, make_hf_model, max_rel_err, save_hf
from train_fixtures import SyntheticBatches

from llm.checkpoint import load_model
from llm.cli import main
from llm.model import forward
from llm.train import train

IDS = np.random.default_rng(0).integers(0, 300, size=(2, 12)).astype(np.int32)
LORA = ["peft.method=lora", "peft.rank=2", "peft.target=[blocks/attn/(q|v|o)/w, blocks/mlp/down/w]"]


def test_to_hf_of_a_lora_run_is_the_merged_model(tiny, tmp_path, capsys):
    import transformers as T

    base_dir = save_hf(make_hf_model("llama"), tmp_path / "hf")
    cfg = tiny("train.steps=2", "optim.lr=0.05", "optim.warmup_steps=0", *LORA,
               f"train.init_from={base_dir}")  # fmt: skip
    val = lambda: SyntheticBatches(8, 16, seed=1, limit=1)  # noqa: E731
    train(cfg, train_batches=SyntheticBatches(8, 16), val_batches=val)
    assert main(["convert", "to-hf", str(cfg.train.run_dir), str(tmp_path / "out")]) == 0
    assert "wrote" in capsys.readouterr().out
    ours = load_model(cfg.train.run_dir)  # the run's decoder with its adapter merged
    ours_logits = np.asarray(forward(ours.config.model, ours.params, IDS).logits_BLV)
    theirs = hf_logits(T.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval(), IDS)
    base = hf_logits(make_hf_model("llama"), IDS)
    assert max_rel_err(theirs, base) > 1e-3  # the adapter is in the exported weights
    err = max_rel_err(theirs, ours_logits)
    assert err < 1e-5, f"max relative logit error {err:.2e} against our merged forward"
