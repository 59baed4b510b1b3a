"""`llm exact-match --checkpoint DIR --data FILE.jsonl`: greedy answers scored by exact match.

The records are instruction or chat JSONL (what `data.format=chat` trains on, e.g. a
`test.jsonl` of `llm data tasks`); the rules of rendering, generation and normalisation are
in llm/eval/exact_match.py.
"""

from __future__ import annotations

import argparse
import time

from llm.cli_args import int_at_least, model_dir_errors


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "exact-match", help="greedy answers to instruction records, scored by exact match"
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="MODEL_DIR",
        help="a run, an `llm convert` output or a Hugging Face directory",
    )
    parser.add_argument("--step", type=int_at_least(0), help="checkpoint step (default: newest)")
    parser.add_argument("--data", required=True, help="instruction / chat JSONL file or folder")
    parser.add_argument("--limit", type=int_at_least(1), help="score the first N records only")
    parser.add_argument("--max-new-tokens", type=int_at_least(1), default=32)
    parser.add_argument("--batch-size", type=int_at_least(1), default=16)
    parser.add_argument("--show", type=int_at_least(0), default=5,
                        help="print this many (reference, answer) pairs")  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm.checkpoint import load_model
    from llm.eval.exact_match import exact_match_file, normalise

    with model_dir_errors(args.checkpoint):
        model = load_model(args.checkpoint, args.step)
    start = time.perf_counter()
    result = exact_match_file(
        model,
        args.data,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    seconds = time.perf_counter() - start
    for ref, got in list(zip(result.references, result.predictions, strict=True))[: args.show]:
        mark = "=" if normalise(ref) == normalise(got) else "x"
        print(f"{mark} expected {ref!r:<40} got {got!r}")
    print(f"exact match {result.correct}/{result.total} = {result.score:.4f} "
          f"({args.data}, {seconds:.1f} s)")  # fmt: skip
    return 0
