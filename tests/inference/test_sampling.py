"""Decoding strategies: processed logits equal the NumPy reference, and sampled frequencies
follow the intended truncated distribution (chi-square)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from llm.inference import sampling
from llm.inference.sampling import SamplingParams, truncated_probs_reference

V = 8
LOGITS_V = np.array([2.0, 1.5, 1.2, 0.7, 0.1, -0.4, -1.0, -2.5], np.float32)
PROMPT, OUTPUT = [1, 4], [0, 0, 6]
CASES = {
    "plain": SamplingParams(),
    "temperature": SamplingParams(temperature=0.6),
    "top_k": SamplingParams(top_k=3),
    "top_p": SamplingParams(top_p=0.7),
    "min_p": SamplingParams(min_p=0.2, temperature=1.3),
    "typical": SamplingParams(typical_p=0.5),
    "penalties": SamplingParams(repetition_penalty=1.3, frequency_penalty=0.4,
                                presence_penalty=0.3),
    "combined": SamplingParams(temperature=0.8, top_k=6, top_p=0.9, min_p=0.05, typical_p=0.9,
                               repetition_penalty=1.2),
}  # fmt: skip


def state_for(params: list[SamplingParams], steps=None):
    s = sampling.make_sampler_state(params, [PROMPT] * len(params), V)
    counts = np.bincount(OUTPUT, minlength=V)
    s = s.replace(counts_BV=jnp.broadcast_to(jnp.asarray(counts, jnp.int32), s.counts_BV.shape))
    return s if steps is None else s.replace(steps_B=jnp.asarray(steps, jnp.int32))


@pytest.fixture(scope="module")
def sample_fn():
    return jax.jit(sampling.sample)


def test_processed_logits_match_reference():
    params = list(CASES.values())
    logits = jax.jit(sampling.processed_logits)(
        jnp.broadcast_to(LOGITS_V, (len(params), V)), state_for(params)
    )
    for row, (name, p) in enumerate(CASES.items()):
        want = truncated_probs_reference(LOGITS_V, p, PROMPT, OUTPUT)
        got = np.asarray(jax.nn.softmax(logits[row]))
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)


def test_truncations_remove_what_they_should():
    """Golden supports, worked out by hand from LOGITS_V (no history)."""
    support = {
        SamplingParams(top_k=3): [0, 1, 2],
        SamplingParams(top_p=0.5): [0, 1],  # p = .38, .23, .17, ...: .38 < .5, .61 >= .5
        SamplingParams(min_p=0.4): [0, 1, 2],  # p / p_max = 1, .61, .45, .27, ...
    }
    for p, want in support.items():
        got = np.nonzero(truncated_probs_reference(LOGITS_V, p))[0].tolist()
        assert got == want, p


@pytest.mark.parametrize("name", list(CASES))
def test_sampled_frequencies_follow_truncated_distribution(name, sample_fn):
    n = 4000
    p = CASES[name]
    want = truncated_probs_reference(LOGITS_V, p, PROMPT, OUTPUT)
    tokens = sample_fn(jnp.broadcast_to(LOGITS_V, (n, V)), state_for([p] * n, np.arange(n)))
    counts = np.bincount(np.asarray(tokens), minlength=V)
    assert counts[want == 0].sum() == 0, f"{name}: sampled a truncated token"
    kept = want > 0
    if kept.sum() > 1:
        _, pvalue = stats.chisquare(counts[kept], n * want[kept])
        assert pvalue > 1e-3, f"{name}: chi-square p={pvalue:.2g}, counts {counts}, want {want}"


def test_greedy_and_seeds(sample_fn):
    logits = jnp.broadcast_to(LOGITS_V, (4, V))
    greedy = sample_fn(logits, state_for([sampling.GREEDY] * 4))
    want = np.argmax(truncated_probs_reference(LOGITS_V, sampling.GREEDY, PROMPT, OUTPUT))
    assert np.all(np.asarray(greedy) == want)
    draws = {
        seed: np.asarray(sample_fn(jnp.broadcast_to(LOGITS_V, (64, V)),
                                   state_for([SamplingParams(seed=seed)] * 64, np.arange(64))))
        for seed in (1, 2)
    }  # fmt: skip
    again = sample_fn(jnp.broadcast_to(LOGITS_V, (64, V)),
                      state_for([SamplingParams(seed=1)] * 64, np.arange(64)))  # fmt: skip
    np.testing.assert_array_equal(draws[1], np.asarray(again))
    assert not np.array_equal(draws[1], draws[2])


def test_invalid_params_are_named():
    with pytest.raises(ValueError, match=r"top_p=1\.5"):
        SamplingParams(top_p=1.5)
    with pytest.raises(ValueError, match="temperature=-1"):
        SamplingParams(temperature=-1)


def test_every_impossible_setting_is_refused_with_its_field():
    """Nothing is clamped: each bad field is reported, the message and `.problems` name it."""
    from llm.inference.sampling import SamplingError

    cases = {"temperature": float("inf"), "top_k": -1, "top_p": 0.0, "min_p": 1.5,
             "typical_p": float("nan"), "repetition_penalty": 0.0, "seed": 2**32,
             "frequency_penalty": float("-inf"), "watermark_delta": float("nan")}  # fmt: skip
    for field, value in cases.items():
        with pytest.raises(SamplingError) as info:
            SamplingParams(**{field: value})
        assert [f for f, _ in info.value.problems] == [field]
        assert str(info.value).startswith(f"{field}={value} must be")
    with pytest.raises(SamplingError) as info:
        SamplingParams(temperature=-1.0, top_p=2.0)
    assert [f for f, _ in info.value.problems] == ["temperature", "top_p"]
