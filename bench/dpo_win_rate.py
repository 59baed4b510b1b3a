"""Reward-model win rate of a preference-tuned policy over its reference (#15, results).

    python bench/dpo_win_rate.py --policy runs/dpo_smollm2 --reference models/smollm2 \
        --reward-model runs/rm_smollm2 --prompts runs/prefs_shakespeare/validation.jsonl

For each held-out prompt, one completion from the policy and one from the reference (the same
sampling seed, the chat template, stopped at the end of the turn: llm/align/best_of_n.py),
both scored by the reward model; the win rate is the share of prompts whose policy completion
scores higher (ties count half). Also prints the mean scores, the mean completion lengths and
a few examples. The reward model and the policy should have seen the same kind of preference
data (configs/rm_smollm2.yaml and configs/dpo_smollm2.yaml both train on the generated
Shakespeare next-line pairs); prompts come from the generator's held-out-scene split.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from llm.align.best_of_n import engine_for, sample
from llm.align.reward_model import RewardModel
from llm.checkpoint import load_model
from llm.data.preference_records import read_preferences
from llm.inference.sampling import SamplingParams


def completions(path: str, prompts: list[str], args: argparse.Namespace) -> list[str]:
    model = load_model(path)
    engine = engine_for(model.config.model, model.params, model.tokenizer, prompts,
                        args.max_new_tokens)  # fmt: skip
    params = SamplingParams(temperature=args.temperature, seed=args.seed)
    out = sample(engine, prompts, 1, params=params, max_new_tokens=args.max_new_tokens)
    del engine, model
    jax.clear_caches()
    return [row[0].text for row in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--reward-model", required=True)
    ap.add_argument("--prompts", required=True, help="preference JSONL with text prompts")
    ap.add_argument("--limit", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    records = read_preferences(args.prompts)[: args.limit]
    prompts = [r.prompt[-1]["content"] for r in records]
    start = time.perf_counter()
    runs = (("policy", args.policy), ("reference", args.reference))
    texts = {name: completions(path, prompts, args) for name, path in runs}
    rm = RewardModel.load(args.reward_model)
    scores = {name: rm([r.prompt for r in records], t) for name, t in texts.items()}
    pol, ref = scores["policy"], scores["reference"]
    wins = float(np.mean((pol > ref) + 0.5 * (pol == ref)))
    chars = {name: np.mean([len(t) for t in ts]) for name, ts in texts.items()}
    print("| prompts | policy win rate | mean RM score: policy | reference "
          "| mean chars: policy | reference | wall |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    print(f"| {len(prompts)} | {wins:.3f} | {pol.mean():.3f} | {ref.mean():.3f} "
          f"| {chars['policy']:.1f} | {chars['reference']:.1f} "
          f"| {time.perf_counter() - start:.0f} s |")  # fmt: skip
    for i in range(3):
        print(f"\nprompt: {prompts[i]!r}\n  policy    ({scores['policy'][i]:+.3f}): "
              f"{texts['policy'][i]!r}\n  reference ({scores['reference'][i]:+.3f}): "
              f"{texts['reference'][i]!r}")  # fmt: skip


if __name__ == "__main__":
    main()
