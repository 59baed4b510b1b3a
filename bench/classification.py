"""Prompting vs fine-tuning on one task: "which of five Shakespeare plays is this line from".

    python bench/classification.py --model models/smollm2 [--out runs/classify]

The task is built from the built-in Shakespeare corpus (`llm.data.prepare_builtin`): verse
lines of 40-90 characters (no speaker headings, no stage directions) from Hamlet, Macbeth,
Othello, Romeo and Juliet and The Tempest, `--per-class` of each drawn with a seed, written
to <out>/plays5.jsonl as {"text", "label"} records. configs/classify_smollm2.yaml splits it
(data.val_fraction, data.seed); every row below is scored on the same validation split.

Rows: zero-, one- and few-shot prompting (`llm.eval.fewshot`, label-token scoring, no
training), then three fine-tuning runs from the imported SmolLM2-135M-Instruct
(`train.init_from`): a linear head on the frozen decoder, a linear head with LoRA, and
label-token scoring with LoRA. It prints a table of accuracy, macro-F1 and wall time, and
each fine-tuned run's classification report. Chance is 0.20.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from llm.checkpoint import load_model
from llm.config import load_config
from llm.data import prepare_builtin
from llm.data.classification import read_records, split_records
from llm.eval.classification import report
from llm.eval.fewshot import evaluate_prompting
from llm.train import train

PLAYS = {
    "hamlet": "Hamlet",
    "macbeth": "Macbeth",
    "othello": "Othello",
    "romeo_and_juliet": "Romeo and Juliet",
    "tempest": "The Tempest",
}
INSTRUCTION = "Which Shakespeare play is each line from: " + ", ".join(PLAYS.values()) + "?"
PRESET = Path(__file__).parents[1] / "configs" / "classify_smollm2.yaml"
VARIANTS = {
    "linear head, frozen decoder": ["peft.method=none", "train.freeze=[.]", "optim.lr=3e-3"],
    "linear head + LoRA": ["peft.method=lora"],
    "label tokens + LoRA": ["peft.method=lora", "loss.head=label_tokens"],
}


def verse_lines(text: str) -> list[str]:
    """Lines of speech: 40-90 characters, not a heading, a direction or all capitals."""
    out = []
    for line in (raw.strip() for raw in text.splitlines()):
        if not 40 <= len(line) <= 90 or line.startswith("[") or line.upper() == line:
            continue
        if re.match(r"^(ACT|SCENE|Act|Scene)\b", line):
            continue
        out.append(line)
    return out


def write_task(out: Path, per_class: int, seed: int) -> Path:
    """<out>/plays5.jsonl: `per_class` lines of each play, interleaved, seeded."""
    docs = {}
    with open(prepare_builtin("shakespeare")) as f:
        for line in f:
            doc = json.loads(line)
            docs[doc["title"]] = doc["text"]
    rng = np.random.default_rng(seed)
    per_play = {}
    for title, label in PLAYS.items():
        lines = verse_lines(docs[title])
        per_play[label] = [lines[i] for i in rng.choice(len(lines), per_class, replace=False)]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "plays5.jsonl"
    with open(path, "w") as f:
        for i in range(per_class):
            for label, lines in per_play.items():
                f.write(json.dumps({"text": lines[i], "label": label}) + "\n")
    return path


def prompting_rows(cfg, model_dir: str, shots: list[int]) -> dict[str, tuple[dict, float]]:
    loaded = load_model(model_dir)
    records = read_records(cfg.data.corpus)
    train_split, val = (
        split_records(cfg, records, "train"),
        split_records(cfg, records, "validation"),
    )
    rows = {}
    for k in shots:
        start = time.perf_counter()
        metrics = evaluate_prompting(
            loaded.config.model, loaded.params, loaded.tokenizer, cfg.loss, train_split, val, k,
            seed=cfg.data.seed, instruction=INSTRUCTION,
        )  # fmt: skip
        name = {0: "zero-shot prompting", 1: "one-shot prompting"}.get(k, f"{k}-shot prompting")
        rows[name] = (metrics, time.perf_counter() - start)
        print(f"{name}: {report(metrics, cfg.loss.labels)}", flush=True)
    return rows


def finetune_rows(overrides: list[str], out: Path) -> dict[str, tuple[dict, float]]:
    rows = {}
    for name, extra in VARIANTS.items():
        run_dir = out / re.sub(r"\W+", "_", name)
        cfg = load_config(PRESET, [*overrides, f"train.run_dir={run_dir}", "train.overwrite=true",
                                   *extra])  # fmt: skip
        start = time.perf_counter()
        result = train(cfg)
        rows[name] = (result["val"], time.perf_counter() - start)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/smollm2", help="train.init_from: model directory")
    p.add_argument("--out", default="runs/classify", type=Path)
    p.add_argument("--per-class", type=int, default=100, help="lines drawn from each play")
    p.add_argument("--shots", default="0,1,5", help="k of the prompting rows ('' for none)")
    p.add_argument("--skip-finetune", action="store_true")
    args = p.parse_args()
    corpus = write_task(args.out, args.per_class, seed=0)
    overrides = [f"train.init_from={args.model}", f"data.corpus={corpus}"]
    cfg = load_config(PRESET, overrides)
    rows = prompting_rows(cfg, args.model, [int(k) for k in args.shots.split(",") if k])
    if not args.skip_finetune:
        rows |= finetune_rows(overrides, args.out)
    print(f"\n{'method':32} {'accuracy':>8} {'macro-F1':>8} {'wall s':>7}")
    for name, (m, wall) in rows.items():
        print(f"{name:32} {m['accuracy']:8.3f} {m['macro_f1']:8.3f} {wall:7.0f}")
    print(f"({rows[next(iter(rows))][0]['examples']} validation examples, chance 0.200)")


if __name__ == "__main__":
    main()
