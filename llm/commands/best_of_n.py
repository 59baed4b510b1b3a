"""`llm best-of-n`: n samples per prompt from a policy, the reward model's pick of each.

llm best-of-n --checkpoint runs/sft --reward-model runs/rm --prompts prompts.jsonl --n 8 \\
    --out runs/bon                      # picks.jsonl, sft.jsonl, preferences.jsonl, summary.json

Prompts are JSONL records with a "prompt" (text: the user turn); a preference file works as
is, and when its records hold the true answer ("chosen"), the summary also gives the true
answers' mean score ("mean_truth") and how often the pick, and the first sample (best-of-1),
is exactly that answer. Outputs in --out:
  picks.jsonl        every prompt's samples, scores and the index of the best
  sft.jsonl          (prompt, best) chats: rejection-sampling fine-tuning data (data.format=chat)
  preferences.jsonl  (prompt, best as chosen, worst as rejected): DPO pairs; prompts whose
                     samples all tie are counted in the summary, not written
  summary.json       mean score of the best, of the first and of all samples (+ the truth's)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llm.cli_args import UsageError, int_at_least, model_dir_errors, refuse
from llm.commands.generate import SAMPLING_FLAGS, sampling_params

DEFAULT_MAX_NEW_TOKENS = 64


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("best-of-n", help="best-of-n sampling with a reward model")
    parser.add_argument("--checkpoint", required=True, metavar="POLICY", help="policy model dir")
    parser.add_argument("--step", type=int_at_least(0), help="policy checkpoint step")
    parser.add_argument("--reward-model", required=True, metavar="RM_RUN",
                        help="a reward-model run directory (loss.name=reward)")  # fmt: skip
    parser.add_argument("--prompts", required=True, metavar="FILE.jsonl", help="{'prompt': ...}")
    parser.add_argument("--n", type=int_at_least(1), default=8, help="samples per prompt")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--limit", type=int_at_least(1), help="use the first LIMIT prompts")
    parser.add_argument("--max-new-tokens", type=int_at_least(1), default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--batch-size", type=int_at_least(1), default=32,
                        help="sequences generated together")  # fmt: skip
    for flag in ("--temperature", "--top-k", "--top-p", "--seed"):
        field, kind, default, text = SAMPLING_FLAGS[flag]
        parser.add_argument(flag, dest=field, type=kind, default=default, help=text)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def read_prompts(path: str, limit: int | None) -> tuple[list[str], list[str | None]]:
    """(prompts, true answers or None) of a JSONL file; a bad line names file:line."""
    prompts, truths = [], []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"{path}:{number}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise UsageError(f"{path}:{number}: expected an object with a text 'prompt'")
            truth = record.get("chosen")
            prompts.append(record["prompt"])
            truths.append(truth if isinstance(truth, str) else None)
            if limit is not None and len(prompts) == limit:
                break
    if not prompts:
        raise UsageError(f"{path}: no prompts")
    return prompts, truths


def run(args: argparse.Namespace) -> int:
    from llm.align.best_of_n import (
        best_of_n,
        engine_for,
        summary,
        write_preferences,
        write_sft,
    )
    from llm.align.reward_model import RewardModel
    from llm.inference.loading import model_for_serving

    vars(args).update({f: d for f, _, d, _ in SAMPLING_FLAGS.values() if not hasattr(args, f)})
    params = sampling_params(args)
    greedy = "--temperature 0 is greedy: all --n samples would be alike; sample (> 0)"
    refuse([(params.temperature == 0 and args.n > 1, greedy)])
    prompts, truths = read_prompts(args.prompts, args.limit)
    with model_dir_errors(args.checkpoint):
        policy = model_for_serving(args.checkpoint, args.step, None)
    with model_dir_errors(args.reward_model):
        rm = RewardModel.load(args.reward_model)
    engine = engine_for(policy.config.model, policy.params, policy.tokenizer, prompts,
                        args.max_new_tokens)  # fmt: skip
    picks = best_of_n(engine, prompts, rm, args.n, params=params,
                      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                      progress=not args.no_progress)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "picks.jsonl").open("w") as f:
        for p in picks:
            record = {"prompt": p.prompt, "samples": list(p.samples), "best": p.best_index,
                      "scores": [float(s) for s in p.scores], "finish": list(p.finish)}  # fmt: skip
            f.write(json.dumps(record) + "\n")
    write_sft(picks, out / "sft.jsonl")
    report = write_preferences(picks, out / "preferences.jsonl")
    result = {**summary(picks), "pairs": report.pairs, "skipped_ties": report.skipped_ties}
    known = [(p, t.strip()) for p, t in zip(picks, truths, strict=True) if t is not None]
    if known:
        result["truth_prompts"] = len(known)
        result["mean_truth"] = float(rm([p.prompt for p, _ in known], [t for _, t in known]).mean())
        result["best_is_truth"] = sum(p.best.strip() == t for p, t in known) / len(known)
        result["first_is_truth"] = sum(p.samples[0].strip() == t for p, t in known) / len(known)
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0
