"""The CPU fine-tuning presets run as their header comments say, and their loss falls.

configs/sft_tiny.yaml (full SFT of the default byte model on addition chats),
configs/lora_tiny.yaml (a LoRA adapter on that run for subtraction chats) and
configs/qlora_tiny.yaml (the same adapter over an NF4-stored base), each for a few steps.
Their data comes from the very command in each preset's header, run here, so the documented
recipe cannot rot.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import jax
import pytest

from llm.config import load_config
from llm.train import train

CONFIGS = Path(__file__).parents[2] / "configs"
STEPS = 12
QUIET = ["train.progress_bar=false", "train.tensorboard=false", "train.log_every=1",
         "train.eval_every=0", f"train.ckpt_every={STEPS}", "eval.batches=1",
         "eval.sample_tokens=0", f"train.steps={STEPS}"]  # fmt: skip


def build_data(preset: str, cwd: Path) -> Path:
    """Runs the `python -c ... > runs/X.jsonl` line of the preset's header in `cwd`."""
    header = [ln.removeprefix("#").strip() for ln in (CONFIGS / preset).read_text().splitlines()
              if ln.startswith("#")]  # fmt: skip
    (line,) = [ln for ln in header if "python -c" in ln and "> runs/" in ln]
    (cwd / "runs").mkdir(exist_ok=True)
    subprocess.run(["bash", "-c", line], cwd=cwd, check=True, timeout=60)
    out = cwd / re.search(r"> (runs/\S+\.jsonl)", line).group(1)
    assert sum(1 for _ in out.open()) == 2000
    return out


def train_losses(run_dir: Path) -> list[float]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("presets")
    data = build_data("sft_tiny.yaml", tmp)
    cfg = load_config(CONFIGS / "sft_tiny.yaml",
                      [f"data.corpus={data}", f"train.run_dir={tmp / 'sft'}", *QUIET])  # fmt: skip
    assert cfg.loss.name == "sft" and cfg.data.format == "chat"
    train(cfg)
    return tmp, tmp / "sft"


def test_sft_tiny_preset_loss_falls(sft_run):
    losses = train_losses(sft_run[1])
    assert len(losses) == STEPS
    # measured 2026-12-07: 5.56 at step 1, 2.92 / 2.61 at steps 11 / 12 (warm-up still rising)
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0, losses


def test_lora_tiny_preset_trains_an_adapter_on_the_sft_run_and_its_loss_falls(sft_run):
    tmp, base = sft_run
    data = build_data("lora_tiny.yaml", tmp)
    cfg = load_config(CONFIGS / "lora_tiny.yaml",
                      [f"data.corpus={data}", f"train.init_from={base}",
                       f"train.run_dir={tmp / 'lora'}", *QUIET])  # fmt: skip
    assert cfg.peft.method == "lora"
    result = train(cfg)
    assert set(result["state"].params) == {"lora"}  # only the adapter was trained
    losses = train_losses(tmp / "lora")
    # measured 2026-12-07: 2.77 at step 1, 2.51 at steps 11 and 12 (warm-up still rising)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.15, losses


def test_qlora_tiny_preset_trains_an_adapter_on_an_nf4_base(sft_run):
    tmp, base = sft_run
    data = build_data("lora_tiny.yaml", tmp)  # qlora_tiny uses lora_tiny's data
    cfg = load_config(CONFIGS / "qlora_tiny.yaml",
                      [f"data.corpus={data}", f"train.init_from={base}",
                       f"train.run_dir={tmp / 'qlora'}", *QUIET])  # fmt: skip
    assert (cfg.peft.method, cfg.peft.quant) == ("qlora", "nf4")
    result = train(cfg)
    assert set(result["state"].params) == {"qlora"}  # only the adapter was trained
    codes = [x for x in jax.tree.leaves(result["state"].frozen["model"]) if x.dtype == "uint8"]
    assert codes, "the frozen base holds no NF4 codes"
    losses = train_losses(tmp / "qlora")
    assert sum(losses[-3:]) / 3 < losses[0] - 0.15, losses
