"""The KL controllers (llm/train/kl_control.py): Ziegler et al. 2019's update, its clip, and
a fixed coefficient that stays fixed."""

from __future__ import annotations

import json

import pytest

from llm.train.kl_control import AdaptiveKLController, FixedKLController, kl_controller


def test_adaptive_update_is_the_papers_formula():
    ctl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=1000)
    state = ctl.initial()
    assert ctl.coef({}) == ctl.coef(state) == 0.1
    # KL 6.6 nats: error 6.6 / 6 - 1 = 0.1 (inside the clip); 64 rollouts of a 1000 horizon
    up = ctl.update(state, kl=6.6, n_steps=64)
    assert up["kl_coef"] == pytest.approx(0.1 * (1 + 0.1 * 64 / 1000), rel=1e-12)
    down = ctl.update(state, kl=5.4, n_steps=64)  # error -0.1
    assert down["kl_coef"] == pytest.approx(0.1 * (1 - 0.1 * 64 / 1000), rel=1e-12)
    assert ctl.update(state, kl=6.0, n_steps=64)["kl_coef"] == 0.1  # on target: unchanged


def test_adaptive_error_is_clipped_to_0_2_either_way():
    ctl = AdaptiveKLController(init_coef=1.0, target=2.0, horizon=100)
    for kl in (2.4, 50.0, 1e9):  # errors 0.2, 24, 5e8: all clipped to +0.2
        assert ctl.update({}, kl=kl, n_steps=10)["kl_coef"] == pytest.approx(1.02)
    for kl in (1.6, 0.0):  # errors -0.2, -1: clipped to -0.2
        assert ctl.update({}, kl=kl, n_steps=10)["kl_coef"] == pytest.approx(0.98)


def test_adaptive_controller_steers_the_kl_to_its_target():
    """A toy policy whose KL is inversely proportional to the coefficient (KL = 3 / beta):
    the controller must settle at beta = 3 / target, from either side."""
    ctl = AdaptiveKLController(init_coef=0.05, target=6.0, horizon=100)
    for start in (0.05, 5.0):
        state = {"kl_coef": start}
        for _ in range(600):
            state = ctl.update(state, kl=3.0 / ctl.coef(state), n_steps=10)
        assert ctl.coef(state) == pytest.approx(0.5, rel=1e-3)
        assert 3.0 / ctl.coef(state) == pytest.approx(6.0, rel=1e-3)


def test_fixed_controller_stays_fixed_and_states_are_json():
    ctl = FixedKLController(0.2)
    state = ctl.initial()
    for kl in (0.0, 6.0, 1e6):
        state = ctl.update(state, kl=kl, n_steps=128)
        assert state == {"kl_coef": 0.2}
    adaptive = kl_controller(0.1, 6.0, 500)
    state = adaptive.update(adaptive.initial(), kl=9.0, n_steps=32)
    resumed = json.loads(json.dumps(state))  # the loop checkpoints the state as JSON
    assert adaptive.update(resumed, 3.0, 32) == adaptive.update(state, 3.0, 32)


def test_the_config_picks_the_controller_and_bad_state_is_an_error():
    assert isinstance(kl_controller(0.1, None, 10), FixedKLController)
    assert isinstance(kl_controller(0.1, 6.0, 10), AdaptiveKLController)
    with pytest.raises(ValueError, match="must be positive"):
        AdaptiveKLController(0.1, 0.0, 10)
    with pytest.raises(ValueError, match="lacks 'kl_coef'"):
        kl_controller(0.1, 6.0, 10).coef({"beta": 1.0})
