"""GAE and whitening (llm/train/advantages.py) against plain Python statements of them."""

from __future__ import annotations

import numpy as np
import pytest

from llm.train.advantages import check_one_span, explained_variance, gae, whiten


def loop_gae(rewards, values, mask, gamma, lam):
    """Schulman et al. 2015 (arXiv:1506.02438) eq. 16 as a backward loop over each row's
    completion tokens, in float64: the value after the last token is 0."""
    N, T = rewards.shape
    adv, ret = np.zeros((N, T)), np.zeros((N, T))
    for n in range(N):
        steps = [t for t in range(T) if mask[n, t]]
        next_value, next_adv = 0.0, 0.0
        for t in reversed(steps):
            delta = float(rewards[n, t]) + gamma * next_value - float(values[n, t])
            next_adv = delta + gamma * lam * next_adv
            adv[n, t], ret[n, t] = next_adv, next_adv + float(values[n, t])
            next_value = float(values[n, t])
    return adv, ret


def ragged_mask(rng, N, T):
    """Rows [prompt | completion | padding] of random lengths; one row empty, one full."""
    mask = np.zeros((N, T), np.float32)
    for n in range(N):
        start = int(rng.integers(0, T))
        mask[n, start : start + int(rng.integers(1, T - start + 1))] = 1
    mask[0] = 1
    if N > 2:
        mask[N - 1] = 0
    return mask


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (6, 16)])
@pytest.mark.parametrize(
    "gamma,lam", [(1.0, 1.0), (1.0, 0.95), (0.99, 0.0), (0.0, 0.7), (0.5, 1.0)]
)
def test_gae_equals_a_backward_loop(shape, gamma, lam):
    rng = np.random.default_rng(hash((shape, gamma, lam)) % 2**32)
    rewards = rng.normal(size=shape).astype(np.float32)
    values = rng.normal(size=shape).astype(np.float32)
    mask = ragged_mask(rng, *shape)
    adv, ret = gae(rewards * mask, values * mask, mask, gamma, lam)
    want_adv, want_ret = loop_gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)
    assert adv.dtype == ret.dtype == np.float32


def test_gae_edge_cases_by_hand():
    # one row, completion at t = 1..3, rewards 0, 0, 1 (a score at the end), values 0.5 each
    r = np.array([[9.0, 0.0, 0.0, 1.0, 9.0]], np.float32)  # 9s off the mask are ignored
    v = np.array([[7.0, 0.5, 0.5, 0.5, 7.0]], np.float32)
    m = np.array([[0, 1, 1, 1, 0]], np.float32)
    adv, ret = gae(r, v, m, gamma=1.0, lam=1.0)  # Monte-Carlo: return 1 at every step
    np.testing.assert_allclose(ret, [[0, 1, 1, 1, 0]])
    np.testing.assert_allclose(adv, [[0, 0.5, 0.5, 0.5, 0]])
    adv, ret = gae(r, v, m, gamma=1.0, lam=0.0)  # one-step TD: r + V_next - V
    np.testing.assert_allclose(adv, [[0, 0.0, 0.0, 0.5, 0]])
    adv, _ = gae(r, v, m, gamma=0.0, lam=1.0)  # no bootstrapping at all: r - V
    np.testing.assert_allclose(adv, [[0, -0.5, -0.5, 0.5, 0]])


def test_gae_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one \\[N, T\\] shape"):
        gae(np.zeros((2, 3)), np.zeros((2, 4)), np.ones((2, 3)), 1.0, 1.0)


def test_whiten_gives_mean_0_std_1_on_the_mask_and_zero_off_it():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 5.0, size=(4, 9)).astype(np.float32)
    mask = ragged_mask(rng, 4, 9)
    w = whiten(x, mask)
    on = mask > 0
    np.testing.assert_allclose(w[on].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(w[on].std(), 1.0, rtol=1e-6)
    assert np.all(w[~on] == 0)
    kept = whiten(x, mask, shift_mean=False)  # the spread rescaled, the mean kept (TRL's)
    np.testing.assert_allclose(kept[on].mean(), x[on].mean(), rtol=1e-5)
    np.testing.assert_allclose(kept[on].std(), 1.0, rtol=1e-6)
    # statistics come from the masked entries only: a huge value off the mask changes nothing
    x2 = x.copy()
    x2[~on] = 1e6
    np.testing.assert_array_equal(whiten(x2, mask), w)


def test_whiten_of_an_empty_mask_is_an_error():
    with pytest.raises(ValueError, match="empty mask"):
        whiten(np.ones((2, 3)), np.zeros((2, 3)))


def test_a_row_with_two_completion_spans_is_an_error():
    check_one_span(np.array([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="row 1 has 2 separate completion spans"):
        check_one_span(np.array([[0, 1, 1, 0], [1, 0, 1, 0]]))


def test_explained_variance_is_1_for_perfect_and_0_for_the_mean():
    rng = np.random.default_rng(1)
    target = rng.normal(size=(3, 5))
    mask = np.ones((3, 5))
    mask[2, 3:] = 0
    assert explained_variance(target, target, mask) == pytest.approx(1.0)
    mean = target[mask > 0].mean()
    assert explained_variance(np.full_like(target, mean), target, mask) == pytest.approx(0.0)
    assert explained_variance(-target, target, mask) < 0
