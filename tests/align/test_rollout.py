"""Rollouts (llm/align/rollout.py): engine samples -> SFT-layout rows with the completion mask.

That the engine's log-probs equal the training forward's on these rows is
tests/inference/test_logprobs.py; here: the row layout, groups, seeds and stop tokens.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from llm.align import rollout
from llm.align.rollout import Sample, check_room, rollout_rows, row_seeds, sample_groups
from llm.config import ModelConfig
from llm.data.prompts import Prompt
from llm.inference import Engine
from llm.model import init_params
from llm.tokenizers.byte import ByteTokenizer

CFG = ModelConfig(vocab_size=259, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64,
                  pos_encoding="rope", init_std=0.2)  # fmt: skip


def _prompt(ids, origin="p:1") -> Prompt:
    return Prompt(tuple(ids), "", (), None, origin)


@pytest.fixture(scope="module")
def engine():
    params = jax.jit(lambda k: init_params(CFG, k))(jax.random.key(0))
    return Engine(CFG, params, ByteTokenizer(), max_len=32)


def test_rows_hold_prompt_then_completion_with_the_mask_on_sampled_tokens():
    prompts = [_prompt([7, 8, 9]), _prompt([5])]
    samples = [Sample((1, 2), (-0.5, -1.5), "ab", "length"),
               Sample((3,), (-2.0,), "", "stop"),
               Sample((4, 5, 6), (-0.1, -0.2, -0.3), "x", "stop"),
               Sample((7,), (-0.7,), "y", "length")]  # fmt: skip
    rows, logp = rollout_rows(prompts, samples, group_size=2, seq_len=8, pad_id=0)
    np.testing.assert_array_equal(rows["inputs"][0], [7, 8, 9, 1, 2, 0, 0, 0])
    np.testing.assert_array_equal(rows["targets"][0], [8, 9, 1, 2, 0, 0, 0, 0])
    np.testing.assert_array_equal(rows["loss_mask"][0], [0, 0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(logp[0], np.float32([0, 0, -0.5, -1.5, 0, 0, 0, 0]))
    np.testing.assert_array_equal(rows["segment_ids"][0], [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(rows["positions"][0], [0, 1, 2, 3, 4, 0, 0, 0])
    np.testing.assert_array_equal(rows["inputs"][2], [5, 4, 5, 6, 0, 0, 0, 0])  # prompt 2
    np.testing.assert_array_equal(rows["loss_mask"][2], [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(logp[2], np.float32([-0.1, -0.2, -0.3, 0, 0, 0, 0, 0]))
    # the mask marks targets that are sampled tokens, and only those
    for i, s in enumerate(samples):
        np.testing.assert_array_equal(rows["targets"][i][rows["loss_mask"][i] > 0], s.token_ids)
    with pytest.raises(ValueError, match=r"rollout 2 has 9 tokens > train\.seq_len=8"):
        rollout_rows(prompts, [*samples[:2], Sample((1,) * 8, (0.0,) * 8, "", "length"),
                               samples[3]], 2, 8, 0)  # fmt: skip


def test_check_room_names_the_prompt():
    check_room([_prompt([1] * 10)], 6, 16)
    with pytest.raises(ValueError, match=r"p:9: the prompt has 11 tokens.*17 > train\.seq_len"):
        check_room([_prompt([1] * 3), _prompt([1] * 11, "p:9")], 6, 16)


def test_groups_are_contiguous_and_seeded(engine):
    prompts = [_prompt([10, 11, 12]), _prompt([20, 21, 22, 23, 24])]
    seeds = row_seeds(0, 5, 6)
    assert seeds == row_seeds(0, 5, 6) and seeds != row_seeds(0, 6, 6) and len(set(seeds)) == 6
    kw = {"group_size": 3, "max_new_tokens": 6, "temperature": 1.0}
    a = sample_groups(engine, prompts, seeds=seeds, **kw)
    b = sample_groups(engine, prompts, seeds=seeds, **kw)
    assert a == b  # deterministic given the seeds
    assert len({s.token_ids for s in a[:3]}) > 1  # a group's samples differ
    assert all(len(s.token_ids) == len(s.logprobs) for s in a)
    greedy = sample_groups(engine, prompts, group_size=2, max_new_tokens=6, temperature=0.0)
    assert greedy[0] == greedy[1] and greedy[2] == greedy[3]  # one prompt per group pair
    with pytest.raises(ValueError, match="needs 6 seeds"):
        sample_groups(engine, prompts, seeds=seeds[:5], **kw)


def test_the_end_of_turn_token_is_kept_and_masked(engine, monkeypatch):
    """A completion that ends with a stop token keeps it (and its log-prob) in the row, so
    the policy is scored for stopping; the reward's text does not contain it."""
    prompt = _prompt([30, 31, 32])
    kw = {"group_size": 1, "max_new_tokens": 8, "temperature": 1.0, "seeds": [123]}
    free = sample_groups(engine, [prompt], **kw)[0]
    ids = free.token_ids
    k = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])  # first new token: stop
    stop_id = ids[k]
    monkeypatch.setattr(rollout, "chat_stops", lambda tok: ((stop_id,), ()))
    done = sample_groups(engine, [prompt], **kw)[0]
    assert done.finish_reason == "stop"
    assert done.token_ids == ids[: k + 1] and done.logprobs == free.logprobs[: k + 1]
    assert done.text == ByteTokenizer().decode(list(ids[:k]))
    rows, _ = rollout_rows([prompt], [done], 1, 16, 0)
    assert rows["loss_mask"].sum() == k + 1 and rows["targets"][0, 2 + k] == stop_id
