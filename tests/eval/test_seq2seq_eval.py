"""Greedy decoding of pairs (llm/eval/seq2seq.py): batched decoding equals decoding each row
alone for both families (padding never leaks), exact match counts equal strings, sentinels
render as <sN>."""

from __future__ import annotations

import jax
import pytest

from llm.config import ModelConfig
from llm.data.seq2seq import SEPARATOR
from llm.eval.seq2seq import decoder_greedy, encdec_greedy, pair_match, render
from llm.model import init_params
from llm.tokenizers import ByteTokenizer

TOK = ByteTokenizer()
SOURCES = ["to be or not", "ay", "the slings and arrows of"]
SMALL = dict(vocab_size=264, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=64)


def test_render_shows_sentinels():
    ids = [*TOK.encode("ab"), 259, *TOK.encode("c"), 261]
    assert render(TOK, ids) == "ab<s0>c<s2>"


@pytest.fixture(scope="module")
def decoder():
    cfg = ModelConfig(**SMALL, pos_encoding="rope")
    return cfg, init_params(cfg, jax.random.key(1))


@pytest.fixture(scope="module")
def t5():
    cfg = ModelConfig(**SMALL, arch="t5", norm="rmsnorm", pos_encoding="none", activation="relu")
    return cfg, init_params(cfg, jax.random.key(2))


def test_decoder_batch_equals_rows_alone(decoder):
    cfg, params = decoder
    sep = TOK.encode(SEPARATOR)
    prompts = [[TOK.bos_id, *TOK.encode(s), *sep] for s in SOURCES]
    kw = {"max_new_tokens": 6, "eos_id": TOK.eos_id, "pad_id": TOK.pad_id}
    together = decoder_greedy(cfg, params, prompts, **kw)
    assert together == [decoder_greedy(cfg, params, [p], **kw)[0] for p in prompts]


def test_encdec_batch_equals_rows_alone(t5):
    cfg, params = t5
    sources = [TOK.encode(s) for s in SOURCES]
    together = encdec_greedy(cfg, params, TOK, sources, 6)
    assert together == [encdec_greedy(cfg, params, TOK, [s], 6)[0] for s in sources]


def test_exact_match_counts_equal_strings(t5):
    cfg, params = t5
    predicted = pair_match(cfg, params, TOK, [(s, "x") for s in SOURCES], max_new_tokens=6)
    assert predicted.correct == sum(p == "x" for p in predicted.predictions)
    pairs = [(s, p if i != 1 else p + "!") for i, (s, p) in
             enumerate(zip(SOURCES, predicted.predictions, strict=True))]  # fmt: skip
    match = pair_match(cfg, params, TOK, pairs, batch_size=2, max_new_tokens=6)
    assert (match.correct, match.total) == (2, 3) and match.predictions == predicted.predictions


def test_decoder_window_past_learned_positions_is_refused():
    """A learned position table has max_seq_len rows (a lookup past it would clamp): a
    window of max_seq_len tokens runs, one more is refused by name."""
    cfg = ModelConfig(**SMALL | dict(max_seq_len=16), pos_encoding="learned")
    params = init_params(cfg, jax.random.key(3))
    prompt = [TOK.bos_id, *TOK.encode("to be")]  # 6 tokens
    kw = {"eos_id": TOK.eos_id, "pad_id": TOK.pad_id}
    assert len(decoder_greedy(cfg, params, [prompt], max_new_tokens=10, **kw)[0]) <= 10
    with pytest.raises(ValueError, match=r"17 tokens, beyond model\.max_seq_len=16"):
        decoder_greedy(cfg, params, [prompt], max_new_tokens=11, **kw)
