"""`llm compare A.json B.json`: is model B better than model A on the same items?

Reads two results files of `llm eval --tasks` (llm/eval/results.py), pairs each task's items
by id, and prints per task and metric: mean A, mean B, the difference B - A, its paired
bootstrap confidence interval and two-sided p-value, the sign-flip permutation p-value, and the
exact McNemar test for 0/1 metrics such as accuracy (definitions in llm/eval/significance.py).
"""

from __future__ import annotations

import argparse

from llm.cli_args import int_at_least


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="paired significance tests of two `llm eval --tasks` results files"
    )
    parser.add_argument("a", metavar="A.json", help="results of model A (the baseline)")
    parser.add_argument("b", metavar="B.json", help="results of model B")
    parser.add_argument(
        "--metric",
        action="append",
        metavar="NAME",
        help="compare this per-item metric only (repeatable; default: every "
        "metric with per-item values in both files)",
    )
    parser.add_argument(
        "--task",
        action="append",
        metavar="NAME",
        help="compare this task only (repeatable; default: every shared task)",
    )
    parser.add_argument(
        "--resamples",
        type=int_at_least(1),
        default=10000,
        help="bootstrap resamples and permutation draws (default 10000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    parser.add_argument(
        "--level",
        type=_level,
        default=0.95,
        help="coverage of the confidence interval (default 0.95)",
    )
    parser.add_argument(
        "--allow-subset",
        action="store_true",
        help="compare the shared items when the files scored different items "
        "(the unmatched ones are counted), instead of failing",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def _level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not in (0, 1)")
    return value


def run(args: argparse.Namespace) -> int:
    import json

    from llm.eval.comparison import compare_files, comparison_json, comparison_table

    comparison = compare_files(
        args.a,
        args.b,
        tasks=args.task,
        metrics=args.metric,
        allow_subset=args.allow_subset,
        level=args.level,
        n_resamples=args.resamples,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(comparison_json(comparison), indent=2))
    else:
        print(comparison_table(comparison))
    return 0
