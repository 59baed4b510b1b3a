"""The comparison table of classical baselines and the Transformer on the default corpus.

    python bench/baselines.py [--steps 1600] [--rows unigram,bigram,kn5,ngram_mlp,rnn,lstm,gru,
        transformer] [--out-dir runs/baselines] [--json FILE] [--md FILE] [--plot FILE]

Every row is scored on the same thing: validation bits per byte of configs/default.yaml's data
(Shakespeare bytes, held-out plays), over the WHOLE validation split, counted like
llm/train/evaluate.py (llm/baselines/heldout.py does it for the count models; the neural runs
get `eval.batches` = the split's batch count). Count rows (unigram add-1, bigram and 5-gram
modified Kneser-Ney) are fitted in this process; neural rows train with
`python train.py --config configs/<preset>.yaml train.steps=STEPS ...` in a fresh run
directory, and their bits per byte is the last validation record of its metrics.jsonl.
Parameters: trainable weights for neural models (`abstract_params`), stored distinct n-grams
(one count each) for count models. Train time: wall time of the fit / of the training
subprocess (compile, evaluation and checkpoints included), and the summed step time.
Rows are merged into --json, so a row can be rerun alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from llm.baselines.heldout import heldout_metrics, split_documents
from llm.baselines.ngram import fit_ngram
from llm.baselines.ngram_counts import Documents
from llm.config import load_config
from llm.model.functional import abstract_params
from llm.tokenizers import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "configs" / "default.yaml"
COUNT_ROWS = {  # row -> (label, method, order, k)
    "unigram": ("unigram (add-1)", "addk", 1, 1.0),
    "bigram": ("bigram (modified KN)", "mkn", 2, 1.0),
    "kn5": ("5-gram (modified KN)", "mkn", 5, 1.0),
}
NEURAL_ROWS = {  # row -> (label, preset)
    "ngram_mlp": ("neural 9-gram MLP (Bengio)", "baseline_ngram_mlp.yaml"),
    "rnn": ("RNN (tanh)", "baseline_rnn.yaml"),
    "lstm": ("LSTM", "baseline_lstm.yaml"),
    "gru": ("GRU", "baseline_gru.yaml"),
    "transformer": ("Transformer (default)", "default.yaml"),
}
ALL_ROWS = (*COUNT_ROWS, *NEURAL_ROWS)


def validation_batches(cfg) -> int:
    """Global batches that cover the whole validation split (rows rounded up)."""
    tok = load_tokenizer(cfg.data.tokenizer)
    n_tokens = split_documents(cfg.data, tok)["validation"].num_tokens
    return math.ceil(math.ceil(n_tokens / cfg.train.seq_len) / cfg.train.batch_size)


def count_row(name: str, cfg, eval_batches: int) -> dict:
    label, method, order, k = COUNT_ROWS[name]
    tok = load_tokenizer(cfg.data.tokenizer)
    shards = split_documents(cfg.data, tok)
    start = time.perf_counter()
    lm = fit_ngram(
        Documents.from_shard(shards["train"]), order, method, tok.vocab_size, tok.bos_id, k=k
    )
    fit_s = time.perf_counter() - start
    val = shards["validation"]
    lp = lm.logprobs(Documents.from_shard(val))
    m = heldout_metrics(lp, val, tok, cfg.train.seq_len, cfg.train.batch_size, eval_batches)
    command = f"llm ngram --config configs/default.yaml --method {method} --order {order} "
    command += f"--eval-batches {eval_batches}" + (" --k 1" if method == "addk" else "")
    return {"row": name, "model": label, "bpb": m["bpb"], "params": lm.counts.num_ngrams(),
            "param_kind": "n-grams", "train_s": fit_s, "wall_s": fit_s, "steps": None,
            "val_tokens": m["tokens"], "command": command}  # fmt: skip


def neural_row(name: str, steps: int, out_dir: Path, eval_batches: int, extra: list) -> dict:
    label, preset = NEURAL_ROWS[name]
    cfg = load_config(ROOT / "configs" / preset)
    default = load_config(DEFAULT).train
    if (cfg.train.seq_len, cfg.train.batch_size) != (default.seq_len, default.batch_size):
        raise RuntimeError(f"{preset}: rows of another shape than configs/default.yaml's")
    run_dir = out_dir / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a resume
    overrides = [f"train.steps={steps}", f"train.run_dir={run_dir}",
                 f"eval.batches={eval_batches}", f"train.eval_every={steps}",
                 f"train.ckpt_every={steps}", "eval.sample_tokens=0", *extra]  # fmt: skip
    cmd = [sys.executable, "train.py", "--config", f"configs/{preset}", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r.get("split") == "val"][-1]
    train_s = sum(r.get("step_s", 0.0) for r in records if r.get("split") == "train")
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params(cfg.model)))
    return {"row": name, "model": label, "bpb": val["bpb"], "params": params,
            "param_kind": "weights", "train_s": train_s, "wall_s": wall, "steps": steps,
            "val_tokens": val["tokens"], "command": " ".join(["python", *cmd[1:]])}  # fmt: skip


def markdown(rows: list[dict]) -> str:
    lines = ["| model | val bits/byte | parameters | train time (s) | wall (s) | steps |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in sorted(rows, key=lambda r: ALL_ROWS.index(r["row"])):
        params = f"{r['params']:,} {r['param_kind']}"
        steps = "-" if r["steps"] is None else str(r["steps"])
        lines.append(f"| {r['model']} | {r['bpb']:.3f} | {params} | {r['train_s']:.1f} | "
                     f"{r['wall_s']:.1f} | {steps} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    rows = sorted(rows, key=lambda r: ALL_ROWS.index(r["row"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = ["tab:gray" if r["param_kind"] == "n-grams" else "tab:blue" for r in rows]
    left.barh([r["model"] for r in rows], [r["bpb"] for r in rows], color=colors)
    left.invert_yaxis()
    left.set_xlabel("validation bits per byte (lower is better)")
    for i, r in enumerate(rows):
        left.text(r["bpb"], i, f" {r['bpb']:.3f}", va="center", fontsize=8)
    for r, c in zip(rows, colors, strict=True):
        right.scatter(max(r["train_s"], 0.1), r["bpb"], color=c)
        right.annotate(r["model"], (max(r["train_s"], 0.1), r["bpb"]), fontsize=7)
    right.set_xscale("log")
    right.set_xlabel("train time (s, log scale)")
    right.set_ylabel("validation bits per byte")
    steps = sorted({r["steps"] for r in rows if r["steps"] is not None})
    fig.suptitle("Shakespeare bytes, held-out plays: count models (gray) vs neural (blue, "
                 f"{'/'.join(map(str, steps)) or '-'} training steps)")  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1600, help="training steps per neural row")
    parser.add_argument("--rows", default=",".join(ALL_ROWS), help="comma-separated rows")
    parser.add_argument("--eval-batches", type=int, default=None,
                        help="validation batches scored (default: the whole split)")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=None,
                        help="optim.warmup_steps of neural runs (default: the preset)")  # fmt: skip
    parser.add_argument("--out-dir", default="runs/baselines", help="neural run directories")
    parser.add_argument("--json", default="runs/baselines/baselines.json", help="merged results")
    parser.add_argument("--md", default="runs/baselines/baselines.md", help="markdown table")
    parser.add_argument("--plot", default="docs/img/baselines.png", help="figure")
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ALL_ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ALL_ROWS)}")
    cfg = load_config(DEFAULT)
    eval_batches = args.eval_batches or validation_batches(cfg)
    extra = [] if args.warmup is None else [f"optim.warmup_steps={args.warmup}"]
    out_json = Path(args.json)
    results = {r["row"]: r for r in json.loads(out_json.read_text())} if out_json.exists() else {}
    for name in rows:
        print(f"[{time.strftime('%H:%M:%S')}] {name} (load {os.getloadavg()[0]:.1f})", flush=True)
        if name in COUNT_ROWS:
            row = count_row(name, cfg, eval_batches)
        else:
            row = neural_row(name, args.steps, Path(args.out_dir), eval_batches, extra)
        row["load_avg"] = os.getloadavg()[0]
        results[name] = row
        print(f"  bpb {row['bpb']:.4f}  params {row['params']:,}  wall {row['wall_s']:.1f} s")
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(list(results.values()), indent=1))
    table = markdown(list(results.values()))
    Path(args.md).write_text(table)
    plot(list(results.values()), Path(args.plot))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
