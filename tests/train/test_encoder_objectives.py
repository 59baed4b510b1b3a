"""Which objectives a run may pair with its model, refused by name before any step: an
encoder (`model.causal=false`) trains only losses that do not score tokens it can see
(llm/train/run_checks.py `check_encoder_loss`, also called by the RL loop); a prefix-LM needs the
sft loss that passes its prefix; switches the run would ignore are refused in the config."""

from __future__ import annotations

import pytest
from train_fixtures import TINY, SyntheticBatches, tiny_config

from llm.align.rl import RLTrainer
from llm.config import LOSS_CONFIGS, load_config
from llm.config.base import ConfigError
from llm.tokenizers.byte import ByteTokenizer
from llm.train.loop import train
from llm.train.run_checks import ENCODER_LOSSES, check_encoder_loss

NEEDS = {"distill": ["loss.top_k=4"]}  # what each loss config needs to be valid at all


def encoder(name: str, *more: str):
    return load_config(None, [*TINY, "model.causal=false", f"loss.name={name}",
                              *NEEDS.get(name, []), *more])  # fmt: skip


@pytest.mark.parametrize("name", sorted(LOSS_CONFIGS))
def test_an_encoder_trains_only_losses_that_do_not_score_visible_tokens(name):
    cfg = encoder(name)
    if name in ENCODER_LOSSES:
        check_encoder_loss(cfg, name)
    else:
        with pytest.raises(ConfigError, match=f"model.causal: .*loss.name='{name}'"):
            check_encoder_loss(cfg, name)
    check_encoder_loss(load_config(None, [*TINY, f"loss.name={name}", *NEEDS.get(name, [])]),
                       name)  # a decoder trains all of them  # fmt: skip
    check_encoder_loss(cfg, "my_python_loss")  # a loss written in Python is the user's call


def test_encoder_classification_needs_the_linear_head():
    check_encoder_loss(encoder("classification", "loss.head=linear"), "classification")
    with pytest.raises(ConfigError, match=r"loss\.head: 'label_tokens' scores the label tokens"):
        check_encoder_loss(encoder("classification", "loss.head=label_tokens"), "classification")


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model.causal=false", "loss.name=distill", "loss.top_k=4"], "model.causal"),
        (["model.prefix_lm=true"], "model.prefix_lm"),  # causal_lm passes no prefix_BL
    ],
)
def test_train_refuses_before_the_first_step(tmp_path, overrides, key):
    cfg = tiny_config(tmp_path, *overrides, "train.steps=1")
    with pytest.raises(ConfigError, match=key):
        train(cfg, train_batches=SyntheticBatches(8, 16), val_batches=lambda: [],
              tokenizer=ByteTokenizer())  # fmt: skip


def test_the_rl_loop_refuses_an_encoder(tmp_path):
    cfg = tiny_config(tmp_path, "model.causal=false", "loss.name=grpo", "data.format=prompts")
    with pytest.raises(ConfigError, match=r"model\.causal: .*loss\.name='grpo'"):
        RLTrainer(cfg, tokenizer=ByteTokenizer())


def test_switches_the_run_would_ignore_are_refused():
    for key, value in (("span_density", 0.3), ("span_mean_length", 5.0)):
        with pytest.raises(ConfigError, match=f"data.{key}: is read only by objective=span"):
            load_config(None, [f"data.{key}={value}"])  # objective causal
        load_config(None, [f"data.{key}={value}", "data.objective=span_corruption",
                           "model.arch=t5", "model.norm=rmsnorm", "model.pos_encoding=none",
                           "loss.name=seq2seq"])  # fmt: skip
    with pytest.raises(ConfigError, match="kv_cache_dtype: 'int8' sets the decode cache"):
        load_config(None, ["model.causal=false", "model.kv_cache_dtype=int8"])
    load_config(None, ["model.kv_cache_dtype=int8"])  # a decoder reads it
