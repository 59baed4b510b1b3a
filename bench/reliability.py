"""Checkpoint reliability: random-moment kill trials, and what checksums cost.

    python bench/reliability.py [--chains 12 --kills 1 --steps 120 --seed 0 --state-mb 256]

1. Kill trials (tests/train/kill_trials.py, the same code as the CI test, more of it): each
   chain is one run directory of the tiny config (`--steps` steps, checkpoints every 3,
   evaluation every 6, keep 2 + best 1) started `--kills` times and signalled (SIGKILL or
   SIGTERM, drawn at random) after a delay drawn from the straight run's duration, then run
   to the end. A row per signal: where it landed, the exit status, the checkpoints left (each
   verified); a chain passes when its losses and final state equal the straight run's bit for
   bit. More steps than CI's 12 put more of the run's time, and so more signals, in the steps
   and saves rather than in start-up (importing jax, compiling).
2. Overhead: a state of `--state-mb` of float32 arrays saved with `Checkpointer` (orbax
   write + SHA-256 manifest + NaN/Inf check) and restored (verify + orbax read), against
   the parts alone: the manifest and the verification re-run on the same step directory,
   the finite check, and the obvious way to hash the same files (read each whole, then
   `hashlib.sha256`) as the peer of the manifest's streaming `hashlib.file_digest`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(ROOT / "tests" / "train"))  # kill_trials, child_train, fixtures
# the test suite's environment (tests/conftest.py), which the child processes inherit
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chains", type=int, default=12, help="run directories signalled")
    p.add_argument("--kills", type=int, default=1, help="signals per run directory")
    p.add_argument("--steps", type=int, default=120, help="steps of each run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state-mb", type=int, default=256, help="size of the overhead state")
    p.add_argument("--repeats", type=int, default=3, help="overhead rounds (median)")
    return p.parse_args()


def kill_trials(a: argparse.Namespace, workdir: Path) -> None:
    from kill_trials import run_chain, run_straight

    straight = run_straight(workdir, a.steps)
    print(f"straight run: {straight.wall_s:.1f} s (start-up, compile, {a.steps} steps, "
          "checkpoints, evaluations)")  # fmt: skip
    rng = random.Random(a.seed)
    print("\n| chain | signal | after (s) | landed in | exit | checkpoints left | chain exact |")
    print("|---:|---|---:|---|---:|---|---|")
    phases: dict[str, int] = {}
    for chain in range(a.chains):
        kills = [(rng.uniform(0, straight.wall_s), rng.choice([signal.SIGKILL, signal.SIGTERM]))
                 for _ in range(a.kills)]  # fmt: skip
        try:
            done, exact = run_chain(workdir, kills, straight, f"chain{chain}"), "yes"
        except AssertionError as err:
            done, exact = [], f"**no**: {str(err)[:200]}"
        for k in done:
            phases[k.phase.split(" (")[0]] = phases.get(k.phase.split(" (")[0], 0) + 1
            print(f"| {chain} | {k.signal} | {k.delay_s:.1f} | {k.phase} | {k.status} "
                  f"| {k.checkpoints} | {exact} |")  # fmt: skip
        if not done:
            print(f"| {chain} | | | | | | {exact} |")
    print("\nsignals by where they landed: " + ", ".join(f"{k} {v}" for k, v in phases.items()))


def _median(f, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def overhead(a: argparse.Namespace, workdir: Path) -> None:
    import dataclasses

    import jax
    import jax.numpy as jnp
    import optax

    from llm.checkpoint import Checkpointer
    from llm.checkpoint import manager as M
    from llm.checkpoint.integrity import verify, write_manifest
    from llm.train.state import init_state

    n = a.state_mb * 2**20 // 4 // 3  # params + two AdamW moments = a.state_mb
    params = {f"w{i}": jnp.zeros((n // 8,)) for i in range(8)}
    state = init_state(params, optax.adamw(1e-3), seed=0)
    leaves, tree = jax.tree.flatten(state)
    state = jax.tree.unflatten(tree, [  # random values: zeros would compress to nothing
        jax.random.normal(jax.random.key(i), x.shape) if x.dtype == jnp.float32 else x
        for i, x in enumerate(leaves)
    ])  # fmt: skip
    step_dir = workdir / "overhead" / "checkpoints" / "1"

    def save():
        import shutil

        shutil.rmtree(workdir / "overhead", ignore_errors=True)
        ckpt = Checkpointer(workdir / "overhead", keep=1, keep_best=0)
        ckpt.save(dataclasses.replace(state, step=jnp.asarray(1, jnp.int32)),
                  data_state={}, meta={})  # fmt: skip
        ckpt.wait()
        ckpt.close()

    def restore():
        ckpt = Checkpointer(workdir / "overhead", keep=1, keep_best=0)
        ckpt.restore(state)
        ckpt.close()

    saved = _median(save, a.repeats)  # the last save stays on disk for the rows below
    files = [p for p in step_dir.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)

    def plain_hash():
        for p in files:
            hashlib.sha256(p.read_bytes()).digest()

    rows = [
        ("save: orbax write + manifest + finite check", saved),
        ("  of which the manifest (SHA-256 of every file)",
         _median(lambda: write_manifest(step_dir), a.repeats)),
        ("  of which the NaN/Inf check", _median(
            lambda: M._check_finite(1, state.to_dict()), a.repeats)),
        ("restore: verify + orbax read", _median(restore, a.repeats)),
        ("  of which the verification", _median(lambda: verify(step_dir), a.repeats)),
        ("peer: each file read whole, then hashlib.sha256", _median(plain_hash, a.repeats)),
    ]  # fmt: skip
    print(f"\nstate {size / 2**20:.0f} MiB on disk in {len(files)} files, median of {a.repeats}")
    print("\n| what | s | MiB/s |\n|---|---:|---:|")
    for name, s in rows:
        print(f"| {name} | {s:.3f} | {size / 2**20 / s:,.0f} |")


def main() -> None:
    a = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        overhead(a, Path(tmp))
        kill_trials(a, Path(tmp))


if __name__ == "__main__":
    main()
