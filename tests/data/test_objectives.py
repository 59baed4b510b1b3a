"""MLM 80/10/10 statistics and T5 span corruption invariants."""

from __future__ import annotations

import numpy as np
import pytest

from llm.data.objectives import (
    mlm_mask,
    random_segmentation,
    span_corrupt,
    span_corruption_lengths,
    span_corruption_row,
    uncorrupt,
)

MASK, PAD, BOS = 1000, 0, 1


def test_mlm_rates_and_specials_untouched():
    rng = np.random.default_rng(0)
    tokens = rng.integers(10, 900, size=(200, 128)).astype(np.int32)
    tokens[:, 0] = BOS
    tokens[:, -8:] = PAD
    segments = np.where(tokens == PAD, 0, 1).astype(np.int32)
    row = {
        "inputs": tokens,
        "segment_ids": segments,
        "positions": segments * 0,
        "targets": tokens * 0,
        "loss_mask": np.zeros(tokens.shape, np.float32),
    }
    out = mlm_mask(
        row, rng, rate=0.15, mask_id=MASK, vocab_size=900, special_ids=(BOS, PAD), pad_id=PAD
    )
    selected = out["loss_mask"] == 1
    assert not selected[:, 0].any() and not selected[:, -8:].any()
    assert abs(selected.sum() / (200 * 119) - 0.15) < 0.01  # 23,800 ordinary tokens
    masked = (out["inputs"] == MASK)[selected].mean()
    kept = (out["inputs"] == tokens)[selected].mean()  # 10% kept + random hits of itself
    assert abs(masked - 0.8) < 0.015 and abs(kept - 0.1) < 0.015
    np.testing.assert_array_equal(out["targets"][selected], tokens[selected])
    np.testing.assert_array_equal(out["inputs"][~selected], tokens[~selected])


def test_random_segmentation():
    rng = np.random.default_rng(0)
    for n, k in [(10, 1), (10, 10), (37, 5)]:
        pieces = random_segmentation(n, k, rng)
        assert len(pieces) == k and pieces.sum() == n and (pieces > 0).all()


@pytest.mark.parametrize("n", [2, 5, 100, 513])
def test_span_corruption_round_trip_and_density(n):
    rng = np.random.default_rng(n)
    tokens = rng.integers(0, 500, size=n).astype(np.int32)
    inputs, targets = span_corrupt(tokens, rng, sentinel_start=32_000)
    np.testing.assert_array_equal(uncorrupt(inputs, targets, 32_000), tokens)
    sentinels = np.sort(inputs[inputs >= 32_000])
    np.testing.assert_array_equal(sentinels, 32_000 + np.arange(len(sentinels)))
    noise = len(targets) - len(sentinels)
    assert noise == max(1, min(n - 1, round(0.15 * n)))
    if n >= 100:
        assert abs(noise / len(sentinels) - 3.0) < 0.6  # mean span length


def test_span_corruption_row_has_fixed_shapes():
    rng = np.random.default_rng(0)
    n_in, n_out = span_corruption_lengths(64, 0.15, 3.0)
    # 64 tokens: 10 noise tokens in 3 spans -> inputs 64 - 10 + 3, targets 10 + 3
    assert (n_in, n_out) == (57, 13)
    # T5's C4 setting: 568 raw tokens give 512 inputs and 114 targets once EOS is appended
    # (the numbers t5.data.preprocessors.random_spans_helper prints for 512 / 0.15 / 3).
    assert span_corruption_lengths(568, 0.15, 3.0) == (511, 113)
    for valid in (64, 40, 1):
        tokens = rng.integers(3, 200, size=64).astype(np.int32)
        segments = (np.arange(64) < valid).astype(np.int32)
        out = span_corruption_row(
            {"inputs": tokens, "segment_ids": segments}, rng, sentinel_start=500, pad_id=PAD
        )
        assert out["inputs"].shape == (n_in,) and out["targets"].shape == (n_out,)
        got_in = out["inputs"][out["input_mask"] == 1]
        got_out = out["targets"][out["target_mask"] == 1]
        expected = tokens[:valid] if valid >= 2 else tokens[:0]
        np.testing.assert_array_equal(uncorrupt(got_in, got_out, 500), expected)
