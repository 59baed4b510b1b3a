"""`llm scaling sweep|fit|plot`: train a ladder of small models, fit L(N, D), draw the curves.

    llm scaling sweep --ladder configs/scaling/ladder.yaml --out runs/scaling
    llm scaling fit --results runs/scaling/results.jsonl [--hold-out largest|NAME ...]
    llm scaling plot --results runs/scaling/results.jsonl --out docs/img/scaling_law.png

`sweep` trains every run of the ladder that has no result yet (llm/eval/sweep.py) and appends
N, D and the final validation loss to `<out>/results.jsonl`. `fit` fits Hoffmann et al.'s
L(N, D) = E + A / N^alpha + B / D^beta to the runs not held out (llm/eval/scaling.py), prints
the parameters, each held-out run's predicted and observed loss, and the compute-optimal
allocation; `--json FILE` also writes them. `plot` draws loss against D per N with the fitted
curves and the held-out points, and the iso-FLOP view beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llm.cli_args import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("scaling", help="scaling-law sweep, fit and plot")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sweep = actions.add_parser("sweep", help="train the ladder's runs; collect N, D, loss")
    sweep.add_argument("--ladder", default="configs/scaling/ladder.yaml", help="ladder YAML")
    sweep.add_argument("--out", default="runs/scaling", help="directory of the runs and results")
    sweep.set_defaults(func=run_sweep)
    for name, func, text in (
        ("fit", run_fit, "fit L(N, D); predict held-out runs"),
        ("plot", run_plot, "draw loss vs D per N with fitted curves"),
    ):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("--results", default="runs/scaling/results.jsonl", help="sweep results")
        sub.add_argument("--hold-out", nargs="*", dest="hold_out", metavar="RUN",
                         help="runs predicted, not fitted: names or 'largest' "
                              "(default: those the ladder marks held_out)")  # fmt: skip
        sub.set_defaults(func=func)
    actions.choices["fit"].add_argument("--json", help="also write the fit and predictions here")
    actions.choices["plot"].add_argument("--out", default="docs/img/scaling_law.png",
                                         help="output PNG")  # fmt: skip


def run_sweep(args: argparse.Namespace) -> int:
    from llm.eval.sweep import RESULTS, load_ladder
    from llm.eval.sweep import run_sweep as sweep

    report = sweep(load_ladder(args.ladder), args.out)
    print(f"{report.ran} runs trained, {report.skipped} already done (skipped); "
          f"results: {Path(args.out) / RESULTS}")  # fmt: skip
    if report.stopped:
        print(f"stopped by {report.stopped}; run the same command again to resume")
        return 75
    for r in report.results:
        print(f"{r.name:>12}  N={r.n_params:>9,}  D={r.tokens:>10,}  val loss {r.val_loss:.4f}"
              f"  {r.wall_s:6.0f} s" + ("  (held out)" if r.held_out else ""))  # fmt: skip
    return 0


def split_results(args: argparse.Namespace):
    """(fitted, held-out) results of `--results`, split by `--hold-out` or the ladder's marks."""
    from llm.eval.sweep import read_results

    results = read_results(args.results)
    if args.hold_out is None:
        held = {r.name for r in results if r.held_out}
    elif args.hold_out == ["largest"]:
        held = {max(results, key=lambda r: r.n_params * r.tokens).name}
    else:
        held = set(args.hold_out)
        unknown = held - {r.name for r in results}
        if unknown:
            raise UsageError(f"--hold-out: {sorted(unknown)} not in {args.results}")
    fitted = [r for r in results if r.name not in held]
    if len(fitted) < 5:
        raise UsageError(f"{args.results}: {len(fitted)} runs to fit; L(N, D) has 5 parameters")
    return fitted, [r for r in results if r.name in held]


def run_fit(args: argparse.Namespace) -> int:
    import numpy as np

    from llm.eval.scaling import compute_optimal, fit_law

    fitted, held = split_results(args)
    law = fit_law(np.array([r.n_params for r in fitted], float),
                  np.array([r.tokens for r in fitted], float),
                  np.array([r.val_loss for r in fitted], float))  # fmt: skip
    print(f"fitted on {len(fitted)} runs: {law.describe()}")
    out = {"law": law.to_dict(), "fitted": [r.name for r in fitted], "held_out": []}
    for r in held:
        pred = float(law.predict(r.n_params, r.tokens))
        rel = (pred - r.val_loss) / r.val_loss
        print(f"held out {r.name}: N={r.n_params:,} D={r.tokens:,} predicted {pred:.4f}, "
              f"observed {r.val_loss:.4f} (relative error {rel:+.2%})")  # fmt: skip
        out["held_out"].append({"name": r.name, "predicted": pred, "observed": r.val_loss,
                                "relative_error": rel})  # fmt: skip
    flops = 6.0 * max(r.n_params * r.tokens for r in fitted + held)
    n_opt, d_opt = compute_optimal(law, flops)
    print(f"compute-optimal at C={flops:.3g} FLOPs: N={n_opt:,.0f}, D={d_opt:,.0f} "
          f"({d_opt / n_opt:.1f} tokens per parameter)")  # fmt: skip
    out["compute_optimal"] = {"flops": flops, "n": n_opt, "d": d_opt}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from llm.eval.scaling import plot_law

    fitted, held = split_results(args)
    plot_law(fitted, held, args.out)
    print(f"wrote {args.out}")
    return 0
