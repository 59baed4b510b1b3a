"""The engine's per-token log-probs equal the training forward's (`token_logprobs`) on the
rollout rows, so PPO's and GRPO's ratios start at exactly 1 for the policy that sampled.

Ragged prompt lengths (rows padded differently in the engine's prefill bucket and in the
training row), a temperature other than 1 (the ratio uses softmax(logits / T), the sampling
distribution) and a LoRA policy whose adapter is non-zero (the engine runs the merged weights
`model_params(params, frozen)`, training runs `model_forward`) are all covered.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))

from train_fixtures import tiny_config

from llm.align.rollout import Sample, rollout_rows, row_seeds, sample_groups
from llm.data.prompts import Prompt
from llm.inference import Engine
from llm.model import init_params, logical_axes
from llm.tokenizers.byte import ByteTokenizer
from llm.train.logprobs import token_logprobs
from llm.train.trainable import Trainable, model_params, trainable_from_config

L = 48


def _prompts() -> list[Prompt]:
    rng = np.random.default_rng(0)
    return [
        Prompt(tuple(int(t) for t in rng.integers(0, 256, n)), "", (), None, f"test:{n}")
        for n in (3, 11, 20)  # ragged: three prompt-length positions in one prefill bucket
    ]


def _split(cfg, trainable: Trainable):
    model = init_params(cfg.model, jax.random.key(1))
    split = trainable.split(model, logical_axes(cfg.model), key=jax.random.key(2))
    return split.params, split.frozen


def _device(rows):
    return {k: jax.numpy.asarray(v) for k, v in rows.items()}


def _perturbed(tree, scale: float):
    """Every leaf plus noise: a LoRA adapter whose B is no longer zero."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    noisy = [
        x + scale * jax.random.normal(k, x.shape, x.dtype)
        for x, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(treedef, noisy)


def _check(cfg, params, frozen, temperature: float) -> None:
    prompts = _prompts()
    engine = Engine(cfg.model, model_params(params, frozen), ByteTokenizer(), max_len=L)
    G = 2
    samples = sample_groups(
        engine, prompts, group_size=G, max_new_tokens=12, temperature=temperature,
        seeds=row_seeds(0, 0, len(prompts) * G),
    )  # fmt: skip
    rows, engine_logp = rollout_rows(prompts, samples, G, L, pad_id=0)
    assert rows["loss_mask"].sum() == sum(len(s.token_ids) for s in samples)
    scored = token_logprobs(cfg.model, params, frozen, _device(rows), temperature=temperature)
    train_logp = np.asarray(scored.logp)
    assert np.all(engine_logp[rows["loss_mask"] == 0] == 0)
    # float32 math by two different programs (KV-cached decode vs one forward): 1e-4 nats
    np.testing.assert_allclose(engine_logp, train_logp, atol=1e-4, rtol=0)
    assert np.abs(engine_logp).max() > 1.0  # non-trivial numbers were compared


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_engine_logprobs_equal_training_forward(tmp_path, temperature):
    cfg = tiny_config(tmp_path, "model.max_seq_len=64", "model.pos_encoding=rope")
    params, frozen = _split(cfg, Trainable())
    _check(cfg, params, frozen, temperature)


def test_engine_logprobs_equal_training_forward_under_lora(tmp_path):
    cfg = tiny_config(
        tmp_path, "model.max_seq_len=64", "peft.method=lora",
        "peft.target=[blocks/attn/(q|k|v|o)/w,blocks/mlp/(up|down)/w]",
    )  # fmt: skip
    params, frozen = _split(cfg, trainable_from_config(cfg))
    assert set(params) == {"lora"} and "model" in frozen
    base = Engine(cfg.model, model_params(params, frozen), ByteTokenizer(), max_len=L)
    params = _perturbed(params, 0.3)
    adapted = Engine(cfg.model, model_params(params, frozen), ByteTokenizer(), max_len=L)
    ids = [list(_prompts()[1].ids)]
    assert base.generate(ids)[0].logprobs != adapted.generate(ids)[0].logprobs  # it adapts
    _check(cfg, params, frozen, 1.0)


def test_greedy_completion_logprobs(tmp_path):
    """Greedy decoding reports the argmax's log-probability at temperature 1, aligned with
    the completion's ids (the stop token excluded, like the ids)."""
    cfg = tiny_config(tmp_path, "model.max_seq_len=64")
    params, frozen = _split(cfg, Trainable())
    engine = Engine(cfg.model, model_params(params, frozen), ByteTokenizer(), max_len=L)
    prompt = list(_prompts()[0].ids)
    done = engine.generate([prompt])[0]
    assert len(done.logprobs) == len(done.token_ids) > 0
    rows, logp = rollout_rows(
        [Prompt(tuple(prompt), "", (), None, "t")],
        [Sample(tuple(done.token_ids), tuple(done.logprobs), done.text, done.finish_reason)],
        1, L, 0,
    )  # fmt: skip
    scored = token_logprobs(cfg.model, params, frozen, _device(rows))
    np.testing.assert_allclose(logp, np.asarray(scored.logp), atol=1e-4, rtol=0)
