"""`llm score-reward --checkpoint RM_RUN --data FILE.jsonl`: a reward model's scores.

llm score-reward --checkpoint runs/rm_tiny --data pairs.jsonl              # accuracy, margin
llm score-reward --checkpoint runs/rm_tiny --data samples.jsonl --out scores.jsonl

Each JSONL record is either a completion, {"prompt": ..., "completion": ...}, scored alone,
or a preference pair, {"prompt": ..., "chosen": ..., "rejected": ...}, whose two sides are
scored and compared (the reward model's accuracy on the pairs: chosen scored higher, a tie
counts half, as in training). Records are read by the preference data's parser
(llm/data/preference_records.py), so text, messages and implicit-prompt records all work, a
KTO file's label is ignored, and a malformed line is an error naming file:line. Pairs that
carry "set" or "rejection" (`llm data preferences` writes both) also get an accuracy line per
value. `--out` writes every record back with its score(s) added.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from llm.cli_args import UsageError, int_at_least, model_dir_errors

PAIR, SINGLE = ("chosen", "rejected"), ("completion",)
GROUP_KEYS = ("set", "rejection")  # record fields whose values get their own accuracy line


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("score-reward", help="score completions with a reward model")
    parser.add_argument("--checkpoint", required=True, metavar="RM_RUN",
                        help="a reward-model run directory (loss.name=reward)")  # fmt: skip
    parser.add_argument("--step", type=int_at_least(0), help="checkpoint step (default: newest)")
    parser.add_argument("--data", required=True, metavar="FILE.jsonl",
                        help="records: prompt + completion, or prompt/chosen/rejected")  # fmt: skip
    parser.add_argument("--out", metavar="FILE.jsonl", help="write the records with scores")
    parser.add_argument("--batch-size", type=int_at_least(1), default=16,
                        help="rows per scoring batch")  # fmt: skip
    parser.set_defaults(func=run)


def read_records(path: str) -> list[tuple[dict[str, Any], Any]]:
    """(record, parsed) of every line: parsed is a `Pair` or (completion) an `Unpaired`,
    read by the preference data's own parser, so every format it takes is scored alike; a
    bad line raises SourceError naming file:line."""
    from llm.data.preference_records import parse_record
    from llm.data.sources import SourceError

    out = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise SourceError(f"{where}: invalid JSON ({err.msg})") from None
            if isinstance(record, dict) and "completion" in record and "label" not in record:
                # a completion to score: the parser's KTO form, its label unused here
                out.append((record, parse_record({**record, "label": True}, where)))
            else:
                out.append((record, parse_record(record, where)))
    if not out:
        raise UsageError(f"{path}: no records")
    return out


def pair_line(name: str, pairs: list[dict[str, Any]]) -> str:
    """Accuracy (a tie counts half) and mean score margin of scored pair records."""
    diff = [r["score_chosen"] - r["score_rejected"] for r in pairs]
    wins = sum(1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in diff)
    return (f"{name} {len(pairs)}: accuracy {wins / len(pairs):.4f}, "
            f"mean margin {sum(diff) / len(diff):.4f}")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from llm.align.reward_model import RewardModel
    from llm.data.preference_records import Pair

    records = read_records(args.data)  # bad data fails before the model loads
    with model_dir_errors(args.checkpoint):
        rm = RewardModel.load(args.checkpoint, args.step)
    prompts, texts, slots = [], [], []  # slots: (record index, output key)
    for k, (_, parsed) in enumerate(records):
        for key in PAIR if isinstance(parsed, Pair) else SINGLE:
            prompts.append(parsed.prompt)
            texts.append(getattr(parsed, key))
            slots.append((k, "score" if key == "completion" else f"score_{key}"))
    scores = rm.score(prompts, texts, batch_size=args.batch_size)
    for (k, name), s in zip(slots, scores, strict=True):
        records[k][0][name] = float(s)
    print(f"{rm.path} step {rm.step}: scored {len(texts)} completions, mean {scores.mean():.4f}")
    pairs = [r for r, parsed in records if isinstance(parsed, Pair)]
    if pairs:
        print(pair_line("pairs", pairs))
        for key in GROUP_KEYS:  # the generated sets tag their records (preference_sets.py)
            for value in sorted({str(r[key]) for r in pairs if key in r}):
                print(pair_line(f"  {key}={value}", [r for r in pairs if str(r.get(key)) == value]))
    if args.out:
        with Path(args.out).open("w") as f:
            for record, _ in records:
                f.write(json.dumps(record) + "\n")
        print(f"wrote {args.out}")
    return 0
