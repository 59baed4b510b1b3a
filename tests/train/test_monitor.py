"""The metrics window: the compiling step is never timed as a step."""

import jax.numpy as jnp
import pytest

from llm.train.monitor import Window, flush


class Records:
    def __init__(self):
        self.records = []

    def log(self, step, record, prefix="train"):
        self.records.append((step, record))

    def advance(self, n, loss=None):
        pass


def metrics(loss: float) -> dict:
    return {"loss": jnp.float32(loss), "finite": jnp.bool_(True)}


RATES = (1000, 6.0, 1e9)  # tokens per step, FLOPs per token, peak FLOP/s


def test_a_window_of_only_the_compiling_step_reports_no_step_time():
    window, log = Window(0), Records()
    window.add(1, metrics(2.0))
    window.exclude_compile()
    flush(window, log, lambda r: {}, RATES)
    ((step, record),) = log.records
    assert step == 1 and record["loss"] == 2.0
    assert not {"step_s", "tokens_per_s", "mfu"} & record.keys()


def test_timed_steps_share_the_window_time():
    window, log = Window(0), Records()
    window.add(1, metrics(2.0))
    window.exclude_compile()
    window.add(2, metrics(1.5))
    window.add(3, metrics(1.0))
    flush(window, log, lambda r: {}, RATES)
    assert [s for s, _ in log.records] == [1, 2, 3]
    record = log.records[-1][1]
    assert record["tokens_per_s"] == pytest.approx(1000 / record["step_s"])
    assert record["mfu"] == pytest.approx(6.0 * record["tokens_per_s"] / 1e9)
    assert 0 < record["step_s"] < 5  # the window's wall time over its 2 timed steps
