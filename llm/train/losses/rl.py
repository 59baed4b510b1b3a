"""What an RL loss is: a `Loss` over rollouts, plus the two steps that turn rollouts into
its training batch. The RL loop (llm/align/rl.py) knows nothing about PPO or GRPO:

    rollouts = ...                                   # the engine's samples, scored by rewards
    scored = jit(loss.score_rollouts)(params, frozen, rollouts.rows)   # no gradient
    batch, metrics, state = loss.training_batch(rollouts, device_get(scored), state)
    for minibatch of batch: state, m = train_step(state, minibatch)    # loss.__call__

`score_rollouts` runs once per iteration with the policy that generated the rollouts (the
"old" policy of PPO's ratio), the reference and any head (PPO's values). `training_batch`
is host-side arithmetic (advantages: GAE, group normalisation; the KL penalty) and may
carry a small JSON-able `state` between iterations (PPO's adaptive KL coefficient), which
the loop checkpoints with the run, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from llm.train.losses.base import Loss
from llm.typing import Array, PyTree

ROW_AXES = ("batch", "length")


@dataclasses.dataclass(frozen=True)
class Rollouts:
    """One iteration's completions, as training rows (llm/train/logprobs.py's row leaves).

    rows: inputs / positions / segment_ids / targets [N, L] int32, loss_mask [N, L] float32
      (1 on the completion's tokens, the end-of-sequence token included when it was sampled).
    sample_logp: [N, L] float32, the engine's log-probability of each sampled token (on
      loss_mask; 0 elsewhere), under the distribution it was sampled from.
    rewards: [N] float32, the summed rewards of each completion (llm/align/rewards.py).
    group: [N] int32, the prompt each row answers (rows of a prompt are contiguous).
    """

    rows: Mapping[str, np.ndarray]
    sample_logp: np.ndarray
    rewards: np.ndarray
    group: np.ndarray

    @property
    def size(self) -> int:
        return int(self.rewards.shape[0])


class RLLoss(Loss):
    """A loss trained on rollouts (PPO, GRPO); see the module docstring for the protocol."""

    @abc.abstractmethod
    def score_rollouts(self, params: PyTree, frozen: PyTree, rows: Mapping[str, Array]) -> dict:
        """Per-token arrays the training batch needs ({"old_logp", "ref_logp", ...}, [N, L]);
        pure, jitted by the loop, no gradient taken."""

    @abc.abstractmethod
    def training_batch(
        self, rollouts: Rollouts, scored: Mapping[str, np.ndarray], state: Mapping[str, Any]
    ) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, Any]]:
        """(the batch leaves of `batch_axes` for all N rollouts, iteration metrics, the state
        for the next iteration). `state` is {} on the first iteration."""
