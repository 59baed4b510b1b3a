"""Decoder-only vs encoder-decoder at equal parameters, on an offline seq2seq task.

    python bench/seq2seq_compare.py [--task reverse_words] [--steps 400] [--batch 32]
                                    [--d_model 64] [--eval_pairs 256] [--out runs/seq2seq_compare]

The curriculum's comparison (Raffel et al. 2020, arXiv:1910.10683, sec. 3.2 compares the same
two families on equal parameters or compute). Both models train on the same pairs of
llm/data/seq2seq_tasks.py in the same order (same seed, same batch), for the same steps:
  * T5 (model.arch=t5, configs/t5_task_tiny.yaml): `--layers` encoder and `--layers` decoder
    blocks at `--d_model`, loss.name=seq2seq, source and target rows of L tokens each;
  * a decoder-only Transformer of 2 x `--layers` blocks (RMSNorm, relu, RoPE) at the same
    width, its d_ff solved so its parameter count is the closest to T5's; the prompt is BOS +
    source + "\\n" and loss.name=sft trains the target and its EOS only, rows of 2 L tokens
    (so both see the same positions per example).
It reports both parameter counts, validation cross-entropy on target tokens (nats per target
byte-token, EOS included: the same tokens for both), greedy exact match on the first
`--eval_pairs` validation pairs, and training throughput (median step time after compile,
target tokens and pairs per second), prints a markdown table and writes results.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from llm.config import load_config
from llm.data.seq2seq import split_pairs
from llm.eval.seq2seq import pair_match
from llm.model import abstract_params
from llm.tokenizers import ByteTokenizer
from llm.train import train

ROOT = Path(__file__).resolve().parents[1]


def param_count(model_cfg) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params(model_cfg)))


def base_overrides(args, run_dir: Path) -> list[str]:
    return [
        f"data.corpus=task:{args.task}", f"train.steps={args.steps}",
        f"train.batch_size={args.batch}", f"train.run_dir={run_dir}", "train.eval_every=0",
        "train.ckpt_every=0", "eval.samples=0", f"eval.batches={args.eval_batches}",
        "train.overwrite=true", "data.sft_overlong=skip",
    ]  # fmt: skip


def t5_config(args, run_dir: Path):
    d = args.d_model
    return load_config(ROOT / "configs" / "t5_task_tiny.yaml", [
        *base_overrides(args, run_dir), f"model.d_model={d}", f"model.d_ff={4 * d}",
        f"model.n_layers={args.layers}", f"model.n_decoder_layers={args.layers}",
        f"train.seq_len={args.seq_len}", f"model.max_seq_len={args.seq_len}",
        *args.t5_overrides,
    ])  # fmt: skip


def decoder_config(args, run_dir: Path, d_ff: int):
    L = 2 * args.seq_len
    return load_config(ROOT / "configs" / "t5_task_tiny.yaml", [
        *base_overrides(args, run_dir), "model.arch=transformer", "loss.name=sft",
        f"model.d_model={args.d_model}", f"model.d_ff={d_ff}",
        f"model.n_layers={2 * args.layers}", "model.n_decoder_layers=null",
        "model.pos_encoding=rope", f"train.seq_len={L}", f"model.max_seq_len={L}",
        "model.init_std=0.02",  # GPT-2's (the preset's 0.125 is T5's d_model**-0.5)
    ])  # fmt: skip


def matched_d_ff(args, target: int) -> int:
    """The decoder's d_ff (a multiple of 8) whose parameter count is closest to `target`."""
    tmp = Path("/nonexistent")
    counts = {
        f: param_count(decoder_config(args, tmp, f).model) for f in range(8, 32 * args.d_model, 8)
    }
    return min(counts, key=lambda f: abs(counts[f] - target))


def run(name: str, cfg, val_pairs, tok) -> dict:
    start = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - start
    rows = [
        json.loads(x) for x in (Path(cfg.train.run_dir) / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [r for r in rows if r["split"] == "train" and r["step"] > 1]
    step_s = float(np.median([r["step_s"] for r in steps]))
    target_tokens = float(np.mean([r["tokens"] for r in steps]))  # loss weight per step
    t0 = time.perf_counter()
    match = pair_match(cfg.model, result["params"], tok, val_pairs, batch_size=128)
    return {
        "model": name,
        "params": param_count(cfg.model),
        "shape": f"d_model {cfg.model.d_model}, d_ff {cfg.model.d_ff}, "
        f"{cfg.model.n_layers}+{cfg.model.n_decoder_layers or 0} blocks, rows of "
        f"{cfg.train.seq_len}",
        "steps": int(result["step"]),
        "val_target_ce": result["val"]["loss"],
        "val_token_accuracy": result["val"]["accuracy"],
        "exact_match": match.score,
        "exact_correct": match.correct,
        "exact_total": match.total,
        "median_step_s": step_s,
        "target_tokens_per_s": target_tokens / step_s,
        "pairs_per_s": cfg.train.batch_size / step_s,
        "train_wall_s": wall,
        "decode_s": time.perf_counter() - t0,
        "examples": [
            (s, t, p) for (s, t), p in zip(val_pairs[:3], match.predictions, strict=False)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="reverse_words")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--d_model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2, help="T5 blocks per stack")
    parser.add_argument("--seq_len", type=int, default=48, help="T5 source/target row length")
    parser.add_argument("--eval_pairs", type=int, default=256)
    parser.add_argument("--eval_batches", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/seq2seq_compare"))
    parser.add_argument("--models", default="decoder,t5", help="which to train, in order")
    parser.add_argument("--t5_overrides", nargs="*", default=[], help="extra key=value for T5")
    args = parser.parse_args()
    tok = ByteTokenizer()
    t5 = t5_config(args, args.out / "t5")
    n_t5 = param_count(t5.model)
    dec = decoder_config(args, args.out / "decoder", matched_d_ff(args, n_t5))
    val_pairs = split_pairs(t5, "validation")[: args.eval_pairs]
    runs = {"decoder": ("decoder-only", dec), "t5": ("encoder-decoder (T5)", t5)}
    results = [run(*runs[m], val_pairs, tok) for m in args.models.split(",")]
    print(f"\ntask {args.task}: {args.steps} steps x {args.batch} pairs, d_model {args.d_model}")
    print(
        "| model | params | steps | val CE (nats/target token) | token acc | exact match "
        "| target tokens/s | pairs/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['model']} | {r['params']:,} | {r['steps']} | {r['val_target_ce']:.4f} | "
            f"{r['val_token_accuracy']:.3f} | {r['exact_correct']}/{r['exact_total']} "
            f"({r['exact_match']:.3f}) | {r['target_tokens_per_s']:,.0f} | {r['pairs_per_s']:.1f} |"
        )
    for r in results:
        for s, t, p in r["examples"]:
            print(f"{r['model']}: {s!r} -> {p!r} (reference {t!r})")
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}
    (args.out / "results.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
