"""Kills at random moments: a run is signalled again and again, then must finish exactly.

    straight = run_straight(workdir)                  # the uninterrupted reference run
    kills = run_chain(workdir, [(4.2, SIGKILL), (9.0, SIGTERM)], straight, "chain0")

`run_chain` starts `child_train.py` on one run directory once per (delay, signal): after
`delay` seconds the process gets the signal, wherever it is (importing jax, restoring,
compiling, stepping, saving, evaluating, exiting). After each signal every checkpoint on disk
must verify against its checksums, and the exit status must be one a scheduler can act on.
Then one last process runs to the end; its losses for every step and its final state must
equal the straight run's bit for bit. Used by tests/train/test_reliability_kill.py (a few
trials) and bench/reliability.py (many).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

CHILD = Path(__file__).parent / "child_train.py"
STEPS = 12  # the CI trials' length; bench/reliability.py runs longer ones


def overrides(steps: int) -> list[str]:
    """Checkpoints every 3 steps, evaluations every 6, keep 2 + best 1."""
    return [f"train.steps={steps}", "train.ckpt_every=3", "train.eval_every=6",
            "train.keep_checkpoints=2", "train.keep_best=1"]  # fmt: skip


# Exit statuses a signalled child may end with: finished (0), stopped and saved (75, the
# requeue status), or killed before train() took the signal over (-SIGTERM) / by SIGKILL.
ALLOWED = {signal.SIGKILL: {0, -signal.SIGKILL}, signal.SIGTERM: {0, 75, -signal.SIGTERM}}


@dataclasses.dataclass
class Straight:
    steps: int
    losses: dict[int, float]
    state: list  # the final checkpoint's leaves, as numpy arrays
    wall_s: float


@dataclasses.dataclass
class Kill:
    delay_s: float
    signal: str
    status: int
    phase: str  # where the signal landed, read off what the process had logged
    checkpoints: list[int]  # on disk after it, every one verified


def start(run_dir: Path, steps: int) -> subprocess.Popen:
    cmd = [sys.executable, str(CHILD), str(run_dir), *overrides(steps)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def train_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill: its step is logged again after the resume
    return [r for r in records if r["split"] == "train"]


def final_state(run_dir: Path, steps: int) -> list:
    import jax
    import numpy as np
    from test_loop import _like
    from train_fixtures import tiny_config

    from llm.checkpoint import Checkpointer

    ckpt = Checkpointer(run_dir, keep=10)
    restored = ckpt.restore(_like(tiny_config(run_dir, *overrides(steps))), step=steps)
    ckpt.close()
    return [np.asarray(x) for x in jax.tree.leaves(restored.state.to_dict())]


def verified_steps(run_dir: Path) -> list[int]:
    """Every committed step, each verified against its checksums (raises if one fails)."""
    from llm.checkpoint.integrity import verify

    root = run_dir / "checkpoints"
    steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []
    for step in steps:
        verify(root / str(step))
    return steps


def run_straight(workdir: Path, steps: int = STEPS, timeout: float = 600) -> Straight:
    run_dir = workdir / "straight"
    t0 = time.monotonic()
    proc = start(run_dir, steps)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    losses = {r["step"]: r["loss"] for r in train_records(run_dir)}
    return Straight(steps, losses, final_state(run_dir, steps), time.monotonic() - t0)


def _phase(before: int, records: list[dict], sent: bool, steps: int) -> str:
    new = records[before:]
    if not sent:
        return "exited before it"
    if not new:
        return "start-up"
    last = new[-1]["step"]
    return "after the last step" if last == steps else f"steps (logged {last})"


def signal_once(
    run_dir: Path, delay_s: float, sig: signal.Signals, steps: int, timeout: float = 600
) -> Kill:
    before = len(train_records(run_dir))
    proc = start(run_dir, steps)
    deadline = time.monotonic() + delay_s
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    sent = proc.poll() is None
    if sent:
        proc.send_signal(sig)
    out, _ = proc.communicate(timeout=timeout)
    status = proc.returncode
    assert status in ALLOWED[sig], f"{sig.name} after {delay_s:.1f} s: exit {status}\n{out}"
    phase = _phase(before, train_records(run_dir), sent, steps)
    kill = Kill(delay_s, sig.name, status, phase, [])
    kill.checkpoints = verified_steps(run_dir)
    if status == 75:  # stopped and saved: the newest checkpoint is the last logged step
        assert "received: saved a checkpoint" in out or "no checkpoint needed" in out, out
    return kill


def run_chain(
    workdir: Path, kills: list[tuple[float, signal.Signals]], straight: Straight, name: str
) -> list[Kill]:
    """Signals one run directory at each (delay, signal), then finishes it and compares."""
    import numpy as np

    run_dir = workdir / name
    done = [signal_once(run_dir, delay, sig, straight.steps) for delay, sig in kills]
    proc = start(run_dir, straight.steps)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    losses = {r["step"]: r["loss"] for r in train_records(run_dir)}  # the last of each step
    assert losses == straight.losses, f"{name}: {done}"  # every step, bit for bit
    for a, b in zip(final_state(run_dir, straight.steps), straight.state, strict=True):
        np.testing.assert_array_equal(a, b)
    return done
