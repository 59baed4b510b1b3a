"""`llm calibrate RESULTS.json --task NAME`: is a multiple-choice task's confidence honest?

Reads the per-item choice probabilities (`per_item["probs"]`, the softmax of the choices'
log-likelihoods) and gold indices of an `llm eval --tasks mc:...` results file, and prints
accuracy, ECE, MCE and NLL (definitions in llm/eval/calibration.py); `--plot` draws the
reliability diagram. With `--val VAL.json` (the same task evaluated on a validation split,
e.g. the task's few-shot file) it fits a temperature there and reports the test figures
before and after it (Guo et al. 2017); `--val-fraction F` fits it on a seeded random fraction
F of the file's items instead and reports the other items.

Temperature scaling needs the choices' logits: log-probabilities are those up to a constant
per item, which softmax ignores. A probability that underflowed to 0 in the results file is
taken as the smallest positive double (log = -708), and the count of such values is printed.
"""

from __future__ import annotations

import argparse

from llm.cli_args import int_at_least


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="ECE, reliability diagram and temperature scaling of an MC task"
    )
    parser.add_argument("results", metavar="RESULTS.json", help="`llm eval --tasks` results")
    parser.add_argument("--task", help="the mc task to read (default: the file's only one)")
    parser.add_argument(
        "--val",
        metavar="VAL.json",
        help="results of the same task on a validation split: fit T there",
    )
    parser.add_argument(
        "--val-fraction",
        type=_fraction,
        help="instead of --val: fit T on this random fraction of the items, report the rest",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the --val-fraction split")
    parser.add_argument("--bins", type=int_at_least(1), default=15, help="confidence bins")
    parser.add_argument("--plot", metavar="PNG", help="write the reliability diagram here")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from llm.eval import calibration as cal

    probs, gold, clipped = _choice_probs(args.results, args.task)
    conf, correct = _top_label(probs, gold)
    out = {
        "n": len(gold),
        "bins": args.bins,
        "zero_probs_clipped": clipped,
        "accuracy": float(correct.mean()),
        "ece": cal.expected_calibration_error(conf, correct, args.bins),
        "mce": cal.maximum_calibration_error(conf, correct, args.bins),
        "nll": _nll(probs, gold),
    }
    if args.val and args.val_fraction:
        raise ValueError("pass --val or --val-fraction, not both")
    if args.val:
        val_probs, val_gold, val_clipped = _choice_probs(args.val, args.task)
        report = cal.calibration_report(
            _logits(val_probs, args.val), val_gold, _logits(probs, args.results), gold, args.bins
        )
        out["temperature_scaling"] = dataclasses.asdict(report)
        out["zero_probs_clipped_val"] = val_clipped
    elif args.val_fraction:
        val, test = _split(len(gold), args.val_fraction, args.seed)
        logits = _logits(probs, args.results)
        report = cal.calibration_report(logits[val], gold[val], logits[test], gold[test], args.bins)
        out["temperature_scaling"] = dataclasses.asdict(report)
    if args.plot:
        out["plot"] = str(cal.reliability_diagram(conf, correct, args.plot, args.bins))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        scaling = out.pop("temperature_scaling", {})
        rows = [*out.items(), *((f"scaled.{key}", value) for key, value in scaling.items())]
        print("\n".join(f"{key:<24} {value}" for key, value in rows))
    return 0


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in (0, 1)")
    return value


def _split(n: int, fraction: float, seed: int):
    """(validation indices, test indices): a seeded random `fraction` of range(n), the rest."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(n)
    n_val = round(fraction * n)
    if not 0 < n_val < n:
        raise ValueError(f"--val-fraction {fraction} of {n} items leaves a split empty")
    return np.sort(order[:n_val]), np.sort(order[n_val:])


def _nll(probs, gold) -> float:
    """Mean -log p(gold), a zero probability clipped to the smallest positive double."""
    import numpy as np

    tiny = np.finfo(np.float64).tiny
    return float(np.mean([-np.log(max(p[g], tiny)) for p, g in zip(probs, gold, strict=True)]))


def _choice_probs(path: str, task: str | None):
    """(probs: list of [C_i] arrays, gold [N], count of zero probabilities) of an mc task."""
    import numpy as np

    from llm.eval.comparison import read_results

    tasks = read_results(path)["tasks"]
    if task is None:
        with_probs = [name for name, t in tasks.items() if "probs" in t.get("per_item", {})]
        if len(with_probs) != 1:
            raise ValueError(
                f"{path}: pass --task, one of the tasks with per-item choice "
                f"probabilities: {with_probs}"
            )
        task = with_probs[0]
    per_item = tasks.get(task, {}).get("per_item", {})
    if "probs" not in per_item or "gold" not in per_item:
        raise ValueError(
            f"{path}: task {task!r} has no per_item 'probs' and 'gold' (tasks: {list(tasks)})"
        )
    probs = [np.asarray(p, dtype=np.float64) for p in per_item["probs"]]
    gold = np.asarray(per_item["gold"], dtype=np.int64)
    for i, (p, g) in enumerate(zip(probs, gold, strict=True)):
        if p.ndim != 1 or not 0 <= g < p.size or np.any(p < 0) or abs(p.sum() - 1) > 1e-6:
            raise ValueError(
                f"{path}: task {task!r}, item {i}: probs {p.tolist()} with gold "
                f"{g} are not a distribution over the choices"
            )
    return probs, gold, int(sum(np.sum(p == 0) for p in probs))


def _top_label(probs, gold):
    import numpy as np

    conf = np.array([p.max() for p in probs])
    correct = np.array([float(np.argmax(p) == g) for p, g in zip(probs, gold, strict=True)])
    return conf, correct


def _rectangular(probs) -> bool:
    return len({p.size for p in probs}) == 1


def _logits(probs, path: str):
    """[N, C] log-probabilities (zeros clipped to the smallest double); equal C required."""
    import numpy as np

    if not _rectangular(probs):
        sizes = sorted({p.size for p in probs})
        raise ValueError(
            f"{path}: temperature scaling needs the same number of choices for "
            f"every item, got {sizes}"
        )
    return np.log(np.maximum(np.stack(probs), np.finfo(np.float64).tiny))
