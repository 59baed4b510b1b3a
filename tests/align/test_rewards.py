"""The reward registry (llm/align/rewards.py): each reward on hand-written completions."""

from __future__ import annotations

import numpy as np
import pytest

from llm.align import rewards as R
from llm.config import RLConfig
from llm.data.prompts import Prompt


def _prompt(answer: str | None = "19") -> Prompt:
    return Prompt((1, 2), "What is 12 + 7?", (), answer, "p.jsonl:1")


def test_arithmetic_reads_the_stated_answer():
    texts = ["19.", "12 + 7 = 19.", "The answer is 19", "-19", "19.0 or 20", "nineteen", "",
             "1 9", "12 + 7 = 20, no: = 19", "12 + 7 = 20\n\nSo 19", "12 + 7 is 19",
             "x = 12 + 7 ="]  # fmt: skip
    got = R.arithmetic([_prompt()] * len(texts), texts)
    # after the last "=" when there is one ("12 + 7 = 20\n\nSo 19" states 20), else the
    # first number ("12 + 7 is 19" states 12)
    np.testing.assert_array_equal(got, [1, 1, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0])
    negative = R.arithmetic([_prompt("-8")] * 3, ["-8.", "8", "= -8"])
    np.testing.assert_array_equal(negative, [1, 0, 1])


def test_arithmetic_needs_answers():
    with pytest.raises(ValueError, match=r"p\.jsonl:1: reward 'arithmetic' needs an 'answer'"):
        R.arithmetic([_prompt(None)], ["3"])
    with pytest.raises(ValueError, match="holds no number"):
        R.arithmetic([_prompt("many")], ["3"])


def test_format_matches_the_whole_stripped_completion():
    fmt = R.REWARDS["format"](RLConfig())
    texts = ["19.", " -3.\n", "19", "19. Done", "x19.", "1.5."]
    np.testing.assert_array_equal(fmt([_prompt()] * 6, texts), [1, 1, 0, 0, 0, 0])
    digit_first = R.REWARDS["format"](RLConfig(format_regex=r"(?s)\d.*"))
    np.testing.assert_array_equal(digit_first([_prompt()] * 3, ["7ab\nc", "a7", "0"]), [1, 0, 1])


def test_weighted_sum_and_each_reward():
    rewards = R.make_rewards(RLConfig(rewards=("arithmetic", "format"), reward_weights=(1.0, 0.5)))
    total, each = rewards([_prompt()] * 3, ["19.", "19 apples", "20."])
    np.testing.assert_array_equal(each["arithmetic"], [1, 1, 0])
    np.testing.assert_array_equal(each["format"], [1, 0, 1])
    np.testing.assert_array_equal(total, [1.5, 1.0, 0.5])
    equal = R.make_rewards(RLConfig(rewards=("arithmetic", "format")))
    np.testing.assert_array_equal(equal([_prompt()], ["19."])[0], [2.0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rewards": ("length",)}, r"\['length'\] not registered"),
        ({"rewards": ("format", "format")}, "names a reward twice"),
        ({"rewards": ("model",)}, r"rl\.reward_model \(a run directory\) is unset"),
        ({"reward_model": "runs/rm"}, "does not name 'model'"),
    ],
)
def test_bad_reward_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        R.make_rewards(RLConfig(**kwargs))


def test_bad_regex_is_a_config_error():
    with pytest.raises(ValueError, match="format_regex"):
        RLConfig(format_regex="(unclosed")


def test_model_reward_calls_the_reward_model(monkeypatch):
    """'model' loads rl.reward_model and passes each prompt's messages and the text (the
    real RewardModel is tested in tests/align/test_reward_model.py; a fake one here)."""
    seen = {}

    class FakeModel:
        @classmethod
        def load(cls, path):
            seen["path"] = path
            return cls()

        def __call__(self, prompts, completions):
            seen["prompts"], seen["completions"] = prompts, completions
            return np.asarray([len(c) for c in completions], np.float32)

    monkeypatch.setattr(R, "RewardModel", FakeModel)
    cfg = RLConfig(rewards=("model",), reward_model="runs/rm_tiny")
    messages = ({"role": "user", "content": "Hi"},)
    prompt = Prompt((1,), "Hi", messages, None, "p:1")
    total, _ = R.make_rewards(cfg)([prompt, prompt], ["abc", "de"])
    np.testing.assert_array_equal(total, [3, 2])
    assert seen == {"path": "runs/rm_tiny", "prompts": [list(messages)] * 2,
                    "completions": ["abc", "de"]}  # fmt: skip
