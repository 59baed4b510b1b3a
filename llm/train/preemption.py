"""Stopping on a signal: the flag the loop polls, and the exit status that asks for a requeue.

A scheduler preempts a job with SIGTERM (Slurm, Kubernetes, most clouds) and a person with
Ctrl-C (SIGINT). Either one, arriving at any moment of `train()` (start-up, restore, compile,
a step, a save, the final evaluation), only sets a flag: the loop finishes the step in hand,
writes a checkpoint, waits for it to be on disk and returns `stopped=<signal name>`, or says
that no checkpoint was needed (nothing trained since the one on disk). A second SIGINT
interrupts at once.

A run stopped this way is unfinished, and its `exit_status` is `train.requeue_exit_status`
(default 75, `EX_TEMPFAIL` of sysexits.h: "try again later"), so that a job script or a
scheduler's exit-code policy can requeue it; running it again resumes. 0 makes a stopped
run look like a success.
"""

from __future__ import annotations

import signal
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalFlag:
    """Records SIGTERM/SIGINT instead of dying; restores the old handlers on exit."""

    def __init__(self) -> None:
        self.name: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SignalFlag:
        for sig in SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.name == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
