"""Advantages for policy-gradient losses: GAE and masked whitening (host-side NumPy).

    adv_NT, ret_NT = gae(rewards_NT, values_NT, mask_NT, gamma=1.0, lam=0.95)
    adv_NT = whiten(adv_NT, mask_NT)

A rollout row is [prompt | completion | padding]; `mask_NT` marks the completion's tokens
(the SFT row's `loss_mask`), which are the episode's timesteps: `values_NT[t]` is the value
head read at the hidden state that predicts token t, and `rewards_NT[t]` the reward for
emitting it. They run on the host inside `RLLoss.training_batch` (llm/train/losses/rl.py),
once per iteration, between the scoring pass and the train steps, so they are NumPy: no
compile per rollout shape, float32 like the device arrays they are made from.
"""

from __future__ import annotations

import numpy as np


def check_one_span(mask_NT: np.ndarray, where: str = "loss_mask") -> None:
    """Each row's completion is one contiguous span (or empty): GAE treats it as one episode
    whose value after the last token is 0, so a gap would split it silently. Raises naming the
    first offending row."""
    mask = np.asarray(mask_NT) > 0
    starts_N = np.sum(mask[:, 1:] & ~mask[:, :-1], axis=1) + mask[:, 0]
    bad = np.flatnonzero(starts_N > 1)
    if bad.size:
        raise ValueError(
            f"{where}: row {int(bad[0])} has {int(starts_N[bad[0]])} separate completion spans; "
            "an RL rollout row holds one completion (prompt, completion, padding)"
        )


def gae(
    rewards_NT: np.ndarray,
    values_NT: np.ndarray,
    mask_NT: np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(advantages, returns), [N, T] float32, zero off the mask.

    Generalized advantage estimation (Schulman et al. 2015, arXiv:1506.02438, eq. 16):
    delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}, and the value
    target R_t = A_t + V_t. The sweep runs backwards over all N rows at once; a position off
    the mask ends the episode (next value and next advantage 0), so the value after each
    row's last completion token is 0 and padding contributes nothing. gamma = lam = 1 gives
    the Monte-Carlo return minus the value; lam = 0 the one-step TD error.
    """
    r_NT = np.asarray(rewards_NT, np.float32)
    v_NT = np.asarray(values_NT, np.float32)
    m_NT = (np.asarray(mask_NT) > 0).astype(np.float32)
    if not r_NT.shape == v_NT.shape == m_NT.shape or r_NT.ndim != 2:
        raise ValueError(
            f"gae needs rewards, values and mask of one [N, T] shape; got {r_NT.shape}, "
            f"{v_NT.shape}, {m_NT.shape}"
        )
    N, T = r_NT.shape
    adv_NT = np.zeros((N, T), np.float32)
    next_v_N = np.zeros(N, np.float32)
    next_a_N = np.zeros(N, np.float32)
    gamma, lam = np.float32(gamma), np.float32(lam)
    for t in range(T - 1, -1, -1):
        m_N = m_NT[:, t]
        delta_N = r_NT[:, t] + gamma * next_v_N - v_NT[:, t]
        a_N = (delta_N + gamma * lam * next_a_N) * m_N
        adv_NT[:, t] = a_N
        next_v_N = v_NT[:, t] * m_N
        next_a_N = a_N
    return adv_NT, (adv_NT + v_NT) * m_NT


def masked_mean_var(x: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(mean, population variance) of `x` over the entries where `mask` is set."""
    m = np.asarray(mask) > 0
    n = int(np.sum(m))
    if n == 0:
        raise ValueError("masked statistics over an empty mask (no completion tokens)")
    x64 = np.asarray(x, np.float64)[m]
    mean = float(np.mean(x64))
    return mean, float(np.mean((x64 - mean) ** 2))


def whiten(x: np.ndarray, mask: np.ndarray, shift_mean: bool = True) -> np.ndarray:
    """`x` scaled to unit standard deviation over the masked entries (and, with
    `shift_mean`, moved to mean 0), zero off the mask; float32.

    PPO implementations normalise advantages over each batch's tokens so that one learning
    rate fits rewards of any scale (Huang et al. 2024, arXiv:2403.17031, "whitening");
    `shift_mean=False` scales the spread to 1 around the original mean, which it keeps (a
    reward's sign; TRL's `masked_whiten`). The variance is
    the population one (a mask of one entry whitens to 0), with 1e-8 under the root.
    """
    mean, var = masked_mean_var(x, mask)
    x64 = np.asarray(x, np.float64)
    out = (x64 - mean) / np.sqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return (out * (np.asarray(mask) > 0)).astype(np.float32)


def explained_variance(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """1 - Var(target - pred) / Var(target) over the mask: 1 for a perfect value function,
    0 for a constant one, negative when it is worse than the mean (nan if Var(target)=0)."""
    _, var_t = masked_mean_var(target, mask)
    _, var_e = masked_mean_var(np.asarray(target, np.float64) - pred, mask)
    return float("nan") if var_t == 0 else 1.0 - var_e / var_t
