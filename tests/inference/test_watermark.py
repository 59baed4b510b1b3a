"""Watermarking: the device green list equals the detector's, and watermarked generations are
detected while plain ones are not (8 of each, z threshold 4)."""

import jax.numpy as jnp
import numpy as np

from llm.inference import SamplingParams, StopCriteria
from llm.inference.watermark import GAMMA, green_mask, is_green, z_score

PROMPTS = [[257, 65 + i, 66 + i] for i in range(4)]


def test_green_mask_matches_detector_and_gamma():
    prev = np.array([0, 5, 258, 123456])
    mask = np.asarray(green_mask(jnp.asarray(prev, jnp.int32), 1000))
    tokens = np.arange(1000)
    for row, p in enumerate(prev):
        np.testing.assert_array_equal(mask[row] > 0, is_green(np.full(1000, p), tokens))
    assert abs(mask.mean() - GAMMA) < 0.03  # 4000 hashed pairs: std of the mean ~0.007


def test_watermarked_text_is_detected_plain_is_not(engine):
    stop = StopCriteria(max_new_tokens=40)
    marked, plain = [], []
    for seed in (0, 1):
        params = [SamplingParams(seed=seed * 10 + i, watermark_delta=4.0) for i in range(4)]
        marked += engine.generate(PROMPTS, params, stop)
        params = [SamplingParams(seed=seed * 10 + i) for i in range(4)]
        plain += engine.generate(PROMPTS, params, stop)
    prompts = PROMPTS * 2
    z_marked = [z_score(c.token_ids, p[-1])[0] for c, p in zip(marked, prompts, strict=True)]
    z_plain = [z_score(c.token_ids, p[-1])[0] for c, p in zip(plain, prompts, strict=True)]
    assert min(z_marked) > 4.0, z_marked
    assert max(z_plain) < 4.0, z_plain
