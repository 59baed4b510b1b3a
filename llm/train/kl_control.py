"""The coefficient of PPO's KL penalty to the reference, fixed or adapted to a target.

    ctl = kl_controller(init_coef=0.05, target=6.0, horizon=10000)   # target None: fixed
    state = ctl.initial()                   # {"kl_coef": 0.05}: JSON, checkpointed by the loop
    beta = ctl.coef(state)                  # this iteration's coefficient
    state = ctl.update(state, kl=mean_sequence_kl, n_steps=rollouts)

Controllers are frozen dataclasses (their config) and pure functions of a small JSON state,
so an RL run that resumes from a checkpoint continues with the exact coefficient it stopped
at (llm/train/losses/rl.py carries the state between iterations).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

KEY = "kl_coef"  # the state's one entry
CLIP = 0.2  # Ziegler et al.'s bound on the proportional error


@dataclasses.dataclass(frozen=True)
class FixedKLController:
    """A constant coefficient: `update` returns the state unchanged."""

    init_coef: float

    def initial(self) -> dict[str, float]:
        return {KEY: float(self.init_coef)}

    def coef(self, state: Mapping[str, Any]) -> float:
        return _read(state, self.initial())

    def update(self, state: Mapping[str, Any], kl: float, n_steps: int) -> dict[str, float]:
        del kl, n_steps
        return {KEY: self.coef(state)}


@dataclasses.dataclass(frozen=True)
class AdaptiveKLController:
    """Ziegler et al. 2019 (arXiv:1909.08593, sec. 2.2): a proportional controller that
    steers the measured KL (nats per sequence) towards `target`:

        e = clip(KL / target - 1, -0.2, 0.2),    beta <- beta * (1 + e * n_steps / horizon)

    with `n_steps` the rollouts the KL was measured on (their K_beta = 0.1 is
    n_steps / horizon). The clip bounds the change per update however far the KL is."""

    init_coef: float
    target: float
    horizon: int

    def __post_init__(self) -> None:
        if not self.target > 0 or not self.horizon > 0:
            raise ValueError(
                f"adaptive KL controller: target ({self.target}) and horizon "
                f"({self.horizon}) must be positive"
            )

    def initial(self) -> dict[str, float]:
        return {KEY: float(self.init_coef)}

    def coef(self, state: Mapping[str, Any]) -> float:
        return _read(state, self.initial())

    def update(self, state: Mapping[str, Any], kl: float, n_steps: int) -> dict[str, float]:
        error = min(max(float(kl) / self.target - 1.0, -CLIP), CLIP)
        return {KEY: self.coef(state) * (1.0 + error * n_steps / self.horizon)}


def _read(state: Mapping[str, Any], initial: Mapping[str, float]) -> float:
    """The state's coefficient; {} (the first iteration) means the initial one."""
    if not state:
        return initial[KEY]
    if KEY not in state:
        raise ValueError(f"KL controller state {dict(state)} lacks {KEY!r}")
    return float(state[KEY])


KLController = FixedKLController | AdaptiveKLController


def kl_controller(init_coef: float, target: float | None, horizon: int) -> KLController:
    """The adaptive controller, or the fixed one when `target` is None (`loss.kl_target`)."""
    if target is None:
        return FixedKLController(init_coef)
    return AdaptiveKLController(init_coef, target, horizon)
