"""How honest are the intervals and tests of llm/eval/significance.py? A simulation.

    python bench/significance.py                  # 1000 simulated datasets per cell
    python bench/significance.py --datasets 200   # quicker, noisier

Prints (1) the coverage of the 95% percentile and BCa bootstrap intervals of a mean, for
0/1 scores (Bernoulli(0.3), like accuracy) and skewed scores (Exponential(1)) at several
item counts; (2) the false-positive rate at 0.05 of the paired tests when A and B are equally
good, and their power when B is better; (3) the time of 10,000 resamples of 10,000 items.
Each rate is over --datasets simulations, so its standard error is sqrt(q (1 - q) / datasets)
(0.0069 for a coverage of 0.95 over 1000).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from tqdm import tqdm

from llm.eval.significance import bootstrap_ci, mcnemar, paired_bootstrap, permutation_test

DATA = {
    "bernoulli(0.3)": (lambda rng, n: (rng.random(n) < 0.3).astype(np.float64), 0.3),
    "exponential(1)": (lambda rng, n: rng.exponential(size=n), 1.0),
}


def coverage(datasets: int, resamples: int) -> None:
    print(f"coverage of the 95% interval of a mean ({datasets} datasets, {resamples} resamples)")
    print(f"{'scores':<16} {'n':>5} {'percentile':>11} {'bca':>7}")
    rng = np.random.default_rng(0)
    for name, (draw, mean) in DATA.items():
        for n in (20, 50, 200):
            hits = {"percentile": 0, "bca": 0}
            for s in tqdm(range(datasets), desc=f"{name} n={n}", leave=False):
                x = draw(rng, n)
                for method in hits:
                    lo, hi = bootstrap_ci(x, n_resamples=resamples, seed=s, method=method)
                    hits[method] += lo <= mean <= hi
            print(f"{name:<16} {n:>5} {hits['percentile'] / datasets:>11.3f} "
                  f"{hits['bca'] / datasets:>7.3f}")  # fmt: skip


def paired_tests(datasets: int, resamples: int, n: int = 200) -> None:
    print(f"\npaired tests on {n} items: rate of p <= 0.05 ({datasets} datasets)")
    print(f"{'case':<34} {'bootstrap':>9} {'permutation':>11} {'mcnemar':>8}")
    rng = np.random.default_rng(1)
    for case, gain in (("null: A, B equally good", 0.0), ("B right 10 points more", 0.1)):
        rejected = np.zeros(3)
        for s in tqdm(range(datasets), desc=case, leave=False):
            p_item = rng.random(n) * 0.8  # item difficulty shared by A and B
            a = (rng.random(n) < p_item).astype(np.float64)
            b = (rng.random(n) < p_item + gain).astype(np.float64)
            rejected += [
                paired_bootstrap(a, b, n_resamples=resamples, seed=s).p_value <= 0.05,
                permutation_test(a, b, n_resamples=resamples, seed=s) <= 0.05,
                mcnemar(a, b).p_value <= 0.05,
            ]
        rate = rejected / datasets
        print(f"{case:<34} {rate[0]:>9.3f} {rate[1]:>11.3f} {rate[2]:>8.3f}")


def speed() -> None:
    print("\nseconds for 10,000 resamples of 10,000 items (best of 3)")
    rng = np.random.default_rng(2)
    for name, values in (("0/1 scores", (rng.random(10000) < 0.4).astype(np.float64)),
                         ("continuous scores", rng.random(10000))):  # fmt: skip
        times = []
        for _ in range(3):
            start = time.perf_counter()
            bootstrap_ci(values, n_resamples=10000)
            times.append(time.perf_counter() - start)
        print(f"{name:<18} {min(times):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=1000)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    coverage(args.datasets, args.resamples)
    paired_tests(args.datasets, args.resamples)
    speed()


if __name__ == "__main__":
    main()
