"""How stable is the Chinchilla fit on a sweep? Refits with each fitted run left out in turn.

    python bench/scaling.py --results runs/scaling/results.jsonl

Prints one row per fit: the run left out, E, A, B, alpha, beta, the held-out runs'
predicted / observed loss and the compute-optimal tokens per parameter at the largest run's
compute. The spread of these rows is the fit's instability with few points (docs/evaluation.md).
"""

from __future__ import annotations

import argparse

import numpy as np

from llm.eval.scaling import compute_optimal, fit_law
from llm.eval.sweep import read_results


def fit_row(label: str, fitted, held) -> str:
    law = fit_law(*(np.array([getattr(r, k) for r in fitted], float)
                    for k in ("n_params", "tokens", "val_loss")))  # fmt: skip
    flops = 6.0 * max(r.n_params * r.tokens for r in [*fitted, *held])
    n_opt, d_opt = compute_optimal(law, flops)
    errors = " ".join(
        f"{(float(law.predict(r.n_params, r.tokens)) - r.val_loss) / r.val_loss:+7.2%}"
        for r in held
    )
    return (f"| {label:>14} | {law.E:6.3f} | {law.A:9.3g} | {law.B:9.3g} | {law.alpha:6.3f} "
            f"| {law.beta:6.3f} | {errors} | {d_opt / n_opt:7.1f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="runs/scaling/results.jsonl")
    args = parser.parse_args()
    results = read_results(args.results)
    fitted = [r for r in results if not r.held_out]
    held = [r for r in results if r.held_out]
    print("| left out | E | A | B | alpha | beta | held-out rel. error | D/N at C_max |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(fit_row("(none)", fitted, held))
    for left in fitted:
        print(fit_row(left.name, [r for r in fitted if r is not left], held))
    no_short = [r for r in fitted if r.steps > min(r.steps for r in fitted)]
    print(fit_row("shortest budget", no_short, held))


if __name__ == "__main__":
    main()
