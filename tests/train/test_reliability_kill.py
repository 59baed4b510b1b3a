"""Random-moment SIGKILL/SIGTERM trials in separate processes (kill_trials.py).

A bounded number here: one run signalled three times at moments drawn from the straight
run's own duration, so they land anywhere from start-up to exit. `bench/reliability.py`
runs many more and prints where each landed (docs/benchmarks.md).
"""

import random
import signal

import pytest
from kill_trials import run_chain, run_straight

SEED = 22  # fixed: a failure names its delays, and the same ones come back


@pytest.mark.slow  # five fresh processes, each importing jax and compiling (~1.5 min)
def test_three_random_signals_then_the_run_finishes_exactly(tmp_path):
    straight = run_straight(tmp_path)
    rng = random.Random(SEED)
    signals = [signal.SIGKILL, signal.SIGTERM, signal.SIGKILL]
    kills = [(rng.uniform(0, straight.wall_s), sig) for sig in signals]
    done = run_chain(tmp_path, kills, straight, "signalled")
    assert [k.signal for k in done] == ["SIGKILL", "SIGTERM", "SIGKILL"]
