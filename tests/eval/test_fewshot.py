"""Prompting baselines (llm/eval/fewshot.py): the prompt text, and scores that do not depend
on how queries are batched."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))

from train_fixtures import tiny_config

from llm.config.loss import ClassificationLossConfig
from llm.data.classification import Record, candidate_rows
from llm.eval.fewshot import (
    cached_label_scores,
    draw_shots,
    evaluate_prompting,
    fewshot_text,
    prompt_scores,
    verb_table,
)
from llm.model import init_params
from llm.tokenizers import ByteTokenizer
from llm.train.losses.classification import label_token_scores

SHOTS = [Record("aei", "vowel", "f:1"), Record("123", "digit", "f:2")]


def test_fewshot_text_is_instruction_shots_then_query():
    loss = ClassificationLossConfig(prompt="Q: {text}\nA:")
    text = fewshot_text(SHOTS, "ou", loss, instruction="Vowel or digit?")
    assert text == "Vowel or digit?\n\nQ: aei\nA: vowel\n\nQ: 123\nA: digit\n\nQ: ou\nA:"
    assert fewshot_text([], "ou", loss) == "Q: ou\nA:"  # zero-shot: the query alone


def test_draw_shots_is_seeded_and_refuses_too_many():
    records = [Record(str(i), "x", f"f:{i}") for i in range(10)]
    assert draw_shots(records, 3, seed=1) == draw_shots(records, 3, seed=1)
    assert len({r.text for r in draw_shots(records, 10, seed=0)}) == 10
    with pytest.raises(ValueError, match="4 shots asked for, but the training split has 3"):
        draw_shots(records[:3], 4, seed=0)


def test_scores_do_not_depend_on_batching_and_metrics_follow(tmp_path):
    cfg = tiny_config(tmp_path, "loss.name=classification", "loss.labels=[digit,vowel]")
    params = init_params(cfg.model, jax.random.key(0))
    queries = [
        Record("ou", "vowel", "q:1"),
        Record("42", "digit", "q:2"),
        Record("a", "vowel", "q:3"),
    ]
    kw = dict(seq_len=64, instruction="Vowel or digit?")
    tok = ByteTokenizer()
    small = prompt_scores(cfg.model, params, tok, cfg.loss, SHOTS, queries, batch_size=2, **kw)
    whole = prompt_scores(cfg.model, params, tok, cfg.loss, SHOTS, queries, batch_size=4, **kw)
    assert small.shape == (3, 2)
    np.testing.assert_allclose(small, whole, rtol=1e-5, atol=1e-5)
    m = evaluate_prompting(cfg.model, params, tok, cfg.loss, SHOTS, queries, 2, batch_size=4, **kw)
    drawn = prompt_scores(
        cfg.model, params, tok, cfg.loss, draw_shots(SHOTS, 2, 0), queries, batch_size=4, **kw
    )
    assert m["accuracy"] == pytest.approx(np.mean(drawn.argmax(-1) == np.array([1, 0, 1])))
    with pytest.raises(ValueError, match="q:1: the 2-shot prompt needs 42 tokens > seq_len=40"):
        prompt_scores(cfg.model, params, tok, cfg.loss, SHOTS, queries, **{**kw, "seq_len": 40})


def test_cached_scores_equal_the_training_scores(tmp_path):
    """The prompt run once with its KV cache copied per label gives the numbers of the
    `label_tokens` loss, which runs prompt + verbaliser as C full rows."""
    cfg = tiny_config(tmp_path)
    params = init_params(cfg.model, jax.random.key(0))
    prompts = [[257, 10, 11, 12], [257, 40, 41, 42, 43, 44, 45]]
    verbs = [[100], [101, 102, 103], [104, 105]]
    rows = candidate_rows(prompts, verbs, L=12, pad=256)
    want = jax.jit(lambda p, b: label_token_scores(cfg.model, {"model": p}, {}, b))(params, rows)
    prompt_BL = np.full((2, 8), 256, np.int32)
    seg_BL = np.zeros((2, 8), np.int32)
    for b, ids in enumerate(prompts):
        prompt_BL[b, : len(ids)], seg_BL[b, : len(ids)] = ids, 1
    verb_CM, mask_CM = verb_table(verbs, 256)
    got = jax.jit(lambda p, *a: cached_label_scores(cfg.model, p, *a))(
        params, prompt_BL, seg_BL, verb_CM, mask_CM
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
