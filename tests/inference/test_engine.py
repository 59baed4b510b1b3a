"""The generation engine: greedy output equals recomputing the prefix, stops, streaming,
one compile per bucket, reproducible sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.inference import GREEDY, SamplingParams, StopCriteria
from llm.inference import engine as engine_mod
from llm.model import forward
from tests.inference.conftest import TINY

PROMPTS = [[10, 20, 30, 40, 50], [7, 8], [100, 101, 102]]


def recompute_greedy(params, prompt, n, max_len):
    """Greedy continuation by a full forward over the whole prefix for every token."""
    fwd = jax.jit(lambda p, t: forward(TINY, p, t).logits_BLV)
    ids = list(prompt)
    for _ in range(n):
        window = np.zeros((1, max_len), np.int32)
        window[0, : len(ids)] = ids
        ids.append(int(jnp.argmax(fwd(params, jnp.asarray(window))[0, len(ids) - 1])))
    return ids[len(prompt) :]


@pytest.fixture(scope="module")
def greedy12(engine):
    return engine.generate(PROMPTS, stop=StopCriteria(max_new_tokens=12))


def test_greedy_equals_recomputing_the_prefix(engine, tiny_params, greedy12):
    for prompt, c in zip(PROMPTS, greedy12, strict=True):
        assert c.token_ids == recompute_greedy(tiny_params, prompt, 12, engine.max_len)
        assert c.finish_reason == "length"


def test_stop_token_and_stop_string(engine, greedy12):
    ids = greedy12[0].token_ids
    stop_tok = ids[4]
    first = ids.index(stop_tok)
    c = engine.generate(PROMPTS[:1], stop=StopCriteria(12, stop_token_ids=(stop_tok,)))[0]
    assert (c.token_ids, c.finish_reason) == (ids[:first], "stop")
    text = engine.tokenizer.decode(ids)
    stop = text[6:8]
    c = engine.generate(PROMPTS[:1], stop=StopCriteria(12, stop_strings=(stop,)))[0]
    assert (c.text, c.finish_reason) == (text[: text.index(stop)], "stop")


def test_streaming_yields_tokens_as_produced(engine, greedy12):
    stream = engine.stream(PROMPTS, stop=StopCriteria(max_new_tokens=12))
    first = next(stream)
    assert first.token == greedy12[first.index].token_ids[0] and first.finish_reason is None
    events = [first, *stream]
    for i, c in enumerate(greedy12):
        mine = [e for e in events if e.index == i]
        assert [e.token for e in mine if e.token is not None] == c.token_ids
        assert "".join(e.text for e in mine) == c.text
        assert mine[-1].finish_reason == "length"


def test_max_new_tokens_and_context_limit(engine):
    c = engine.generate([PROMPTS[1]], stop=StopCriteria(max_new_tokens=3))[0]
    assert len(c.token_ids) == 3
    long_prompt = list(range(engine.max_len - 2))
    c = engine.generate([long_prompt], stop=StopCriteria(max_new_tokens=10))[0]
    assert (len(c.token_ids), c.finish_reason) == (2, "length")  # the context is full


def test_compiles_once_per_bucket(engine):
    engine.generate([[1, 2, 3]], stop=StopCriteria(max_new_tokens=2))
    steps, prefills = engine_mod._step._cache_size(), engine_mod._prefill._cache_size()
    engine.generate([[4, 5, 6, 7, 8, 9]], stop=StopCriteria(max_new_tokens=5))  # same buckets
    assert engine_mod._step._cache_size() == steps
    assert engine_mod._prefill._cache_size() == prefills


def test_seeded_sampling_reproduces(engine):
    p = [SamplingParams(temperature=1.0, top_p=0.95, seed=s) for s in (1, 1, 2)]
    prompt = PROMPTS[0]
    out = engine.generate([prompt] * 3, p, StopCriteria(max_new_tokens=10))
    assert out[0].token_ids == out[1].token_ids != out[2].token_ids
    alone = engine.generate([prompt], p[2], StopCriteria(max_new_tokens=10))[0]
    assert alone.token_ids == out[2].token_ids  # independent of the rest of the batch


def test_bad_prompts_are_rejected(engine):
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]])
    with pytest.raises(ValueError, match="48 tokens"):
        engine.generate([list(range(48))])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([[TINY.vocab_size]])


def test_insert_into_slots_continues_like_generate(engine, greedy12):
    """Rows prefilled apart and inserted into a running state (`Cache.put_rows`, the
    server's continuous batching) decode exactly as a batch generated together; the padding
    row of the prefill's batch bucket is dropped, and untouched rows stay idle."""
    state = engine.empty_state(4)
    new = engine.prefill(PROMPTS, [GREEDY] * 3)  # a batch bucket of 4: one pad row
    slots = [2, 0, 3]
    state = engine.insert(state, new, slots)
    np.testing.assert_array_equal(state.cache.lengths_B, [2, 0, 5, 3])
    active = np.array([True, False, True, True])
    tokens = [np.asarray(state.tokens_B)]
    for _ in range(11):
        state = engine.step(state, active)
        tokens.append(np.asarray(state.tokens_B))
    for slot, c in zip(slots, greedy12, strict=True):
        assert [int(t[slot]) for t in tokens] == c.token_ids
    np.testing.assert_array_equal(state.cache.lengths_B, [13, 0, 16, 14])
