"""RL iteration cost: rollout tokens/s and the share of an iteration spent generating.

    python bench/rl.py --preset tiny --iterations 4        # configs/grpo_tiny.yaml, fresh run
    python bench/rl.py --preset smollm2 --iterations 3 --init-from models/smollm2
    python bench/rl.py --runs runs/grpo_tiny runs/grpo_smollm2   # summarise finished runs

Each RL iteration (llm/align/rl.py) generates rollouts with the inference engine (`gen_s`:
prefill + decode of prompts x group_size rows, host bookkeeping included) and then trains on
them (`train_s`: the jitted scoring pass plus every optimiser step of the iteration). The
table gives medians over the iterations after the first (whose times include compilation),
and the first iteration's times separately.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"tiny": "configs/grpo_tiny.yaml", "smollm2": "configs/grpo_smollm2.yaml"}


def rollout_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    by_step = {}
    for record in map(json.loads, lines):
        if record.get("split") == "rollout":
            by_step[record["step"]] = record  # a resumed run's repeats keep the last
    return [by_step[s] for s in sorted(by_step)]


def summary(name: str, records: list[dict]) -> dict:
    if len(records) < 2:
        raise SystemExit(f"{name}: {len(records)} iteration(s); need 2 (the first compiles)")
    rest = records[1:]

    def med(key):
        return statistics.median(r[key] for r in rest)

    return {
        "run": name,
        "iterations": len(records),
        "tokens": med("completion_tokens"),
        "gen_s": med("gen_s"),
        "train_s": med("train_s"),
        "gen_share": med("gen_share"),
        "tok_s": med("rollout_tokens_per_s"),
        "first_gen_s": records[0]["gen_s"],
        "first_train_s": records[0]["train_s"],
    }


def fresh_run(preset: str, iterations: int, init_from: str | None, corpus: str | None) -> Path:
    from llm.align.rl import iteration_plan, train_rl
    from llm.config import load_config

    overrides = ["train.eval_every=0", "train.ckpt_every=0", "rl.eval_prompts=8"]
    if init_from:
        overrides.append(f"train.init_from={init_from}")
    if corpus:
        overrides.append(f"data.corpus={corpus}")
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench_rl_{preset}_"))
    cfg = load_config(str(ROOT / PRESETS[preset]), [*overrides, f"train.run_dir={run_dir}"])
    per_iter, _ = iteration_plan(cfg)
    cfg = load_config(str(ROOT / PRESETS[preset]),
                      [*overrides, f"train.run_dir={run_dir}",
                       f"train.steps={per_iter * iterations}"])  # fmt: skip
    train_rl(cfg)
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), action="append", default=[])
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--init-from", help="train.init_from (the SmolLM2 preset's model)")
    parser.add_argument("--corpus", help="data.corpus (default: the preset's)")
    parser.add_argument("--runs", nargs="*", default=[], help="finished RL run directories")
    args = parser.parse_args()
    rows = [summary(str(d), rollout_records(Path(d))) for d in args.runs]
    for preset in args.preset:
        run_dir = fresh_run(preset, args.iterations, args.init_from, args.corpus)
        rows.append(summary(preset, rollout_records(run_dir)))
    if not rows:
        raise SystemExit("nothing to measure: give --preset and/or --runs")
    print("| run | iterations | completion tokens | gen s | train s | generation share | "
          "rollout tokens/s | first iteration gen s / train s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['iterations']} | {r['tokens']:.1f} | {r['gen_s']:.2f} | "
              f"{r['train_s']:.2f} | {r['gen_share']:.0%} | {r['tok_s']:.1f} | "
              f"{r['first_gen_s']:.1f} / {r['first_train_s']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
