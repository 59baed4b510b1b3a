"""Crash safety across processes: golden resume after SIGKILL, and SIGTERM saves and exits.

Each test runs `child_train.py` in fresh Python processes with the same environment (the
conftest's XLA flags), as a real preempted job would be restarted.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from test_loop import _like
from train_fixtures import tiny_config

from llm.checkpoint import Checkpointer

CHILD = Path(__file__).parent / "child_train.py"
N, K = 12, 4  # total steps; checkpoint interval (the kill comes after checkpoint K)
COMMON = [f"train.steps={N}", f"train.ckpt_every={K}", "train.keep_checkpoints=10"]


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _reap_children():
    """Kills (by pid) any child a failing test left running."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _start(run_dir: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, str(CHILD), str(run_dir), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    STARTED.append(proc)
    return proc


def _finish(proc: subprocess.Popen, timeout: float = 240, status: int = 0) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == status, out
    return out


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early:\n{proc.stdout.read()}")
        assert time.monotonic() < deadline, "timed out waiting for the child"
        time.sleep(0.1)


def _train_losses(run_dir: Path) -> dict[int, float]:
    """Step -> loss; a step logged twice (before a kill and after resuming) keeps the last."""
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def _final_state(run_dir: Path):
    cfg = tiny_config(run_dir, *COMMON)
    ckpt = Checkpointer(run_dir, keep=10)
    restored = ckpt.restore(_like(cfg), step=N)
    ckpt.close()
    return restored.state


@pytest.mark.slow  # three fresh processes, each compiling the step (~1 min in all)
def test_golden_resume_after_sigkill(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc_a = _start(straight, *COMMON)
    proc_b = _start(killed, "--block-after", str(K + 2), *COMMON)
    _wait_for(
        lambda: (killed / "blocked").exists() and (killed / "checkpoints" / str(K)).is_dir(), proc_b
    )
    proc_b.send_signal(signal.SIGKILL)
    proc_b.wait()
    assert sorted(os.listdir(killed / "checkpoints")) == [str(K)]
    _finish(proc_a)
    resumed = _finish(_start(killed, *COMMON))
    assert f"finished step={N}" in resumed

    a, b = _train_losses(straight), _train_losses(killed)
    assert sorted(a) == sorted(b) == list(range(1, N + 1))
    assert [b[s] for s in range(K + 1, N + 1)] == [a[s] for s in range(K + 1, N + 1)]  # bitwise
    sa, sb = _final_state(straight), _final_state(killed)
    for x, y in zip(jax.tree.leaves(sa.to_dict()), jax.tree.leaves(sb.to_dict()), strict=True):
        np.testing.assert_array_equal(x, y)  # params, optimiser state, rng, counters


@pytest.mark.slow  # one fresh process (~25 s)
def test_sigterm_saves_a_usable_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(run_dir, "train.steps=100000", "train.ckpt_every=0")
    metrics = run_dir / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    out = _finish(proc, timeout=120, status=75)  # train.requeue_exit_status: requeue me
    assert "SIGTERM received: saved a checkpoint" in out and "stopped=SIGTERM" in out
    last_logged = max(_train_losses(run_dir))
    cfg = tiny_config(run_dir, "train.steps=100000")
    ckpt = Checkpointer(run_dir, keep=3)
    restored = ckpt.restore(_like(cfg))
    ckpt.close()
    assert restored.step == last_logged == int(restored.state.step)
    assert restored.data_state == {"next_batch": last_logged}
