"""data.order=streams: B contiguous streams of packed rows, `continues`, resume, processes."""

from __future__ import annotations

import numpy as np
import pytest

from llm.config import ConfigError
from llm.data import load_shards, make_batches
from llm.data.streams import CONTINUES
from llm.tokenizers import ByteTokenizer

TOK = ByteTokenizer()
B, L = 8, 32  # small_overrides' batch shape


@pytest.fixture(scope="module")
def cfg(txt_corpus, tmp_path_factory, small_config):
    folder, _ = txt_corpus
    return small_config(folder, tmp_path_factory.mktemp("cache"), "data.order=streams")


@pytest.fixture(scope="module")
def stream(cfg):
    """(tokens, document index) of the train split's token stream, documents in the seeded
    order the docs promise (llm/data/packing.py), built here from the shard alone."""
    shard = load_shards(cfg.data, TOK)[0]["train"]
    order = np.random.default_rng(cfg.data.seed).permutation(shard.num_docs)
    tokens = np.concatenate([shard.document(d) for d in order])
    doc = np.concatenate([np.full(len(shard.document(d)), i) for i, d in enumerate(order)])
    return tokens, doc


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_each_row_continues_its_stream_and_streams_tile_the_token_stream(cfg, stream):
    tokens, _ = stream
    S = len(tokens) // L // B  # rows per stream (full rows only: the padded row is never read)
    batches = _take(make_batches(cfg, "train", TOK), S + 1)
    inputs_KBL = np.stack([b["inputs"] for b in batches])
    # stream b, read batch after batch, is rows [b S, (b + 1) S) of the packed stream
    streams_BT = inputs_KBL[:S].transpose(1, 0, 2).reshape(B, S * L)
    np.testing.assert_array_equal(streams_BT.reshape(-1), tokens[: B * S * L])
    # the stream wraps to its own start: batch S is batch 0 again
    for key, value in batches[0].items():
        np.testing.assert_array_equal(batches[S][key], value)


def test_continues_marks_rows_whose_document_began_in_the_previous_row(cfg, stream):
    _, doc = stream
    S = len(doc) // L // B
    batches = _take(make_batches(cfg, "train", TOK), S + 1)
    got_KB = np.stack([b[CONTINUES] for b in batches])
    assert got_KB.dtype == np.float32 and got_KB.shape == (S + 1, B)
    want_KB = np.zeros((S + 1, B), np.float32)
    for k in range(1, S):  # the first row of a stream (and the wrap at k = S) never continues
        for b in range(B):
            first = (b * S + k) * L  # stream position of the row's first token
            want_KB[k, b] = doc[first] == doc[first - 1]
    np.testing.assert_array_equal(got_KB, want_KB)
    assert 0 < want_KB.sum() < want_KB[1:S].size  # both cases occur mid-epoch


def test_resume_at_batch_k_and_process_shares(cfg):
    straight = _take(make_batches(cfg, "train", TOK), 7)
    it = make_batches(cfg, "train", TOK)
    _take(it, 3)
    state = it.get_state()
    assert state["order"] == "streams"
    again = make_batches(cfg, "train", TOK)
    again.set_state(state)
    for want, got in zip(straight[3:], _take(again, 4), strict=True):
        assert all(np.array_equal(want[k], got[k]) for k in want)
    parts = [_take(make_batches(cfg, "train", TOK, p, 2), 7) for p in range(2)]
    for k in range(7):  # process p holds rows [p B/2, (p + 1) B/2) of every global batch
        for key in straight[k]:
            joined = np.concatenate([parts[0][k][key], parts[1][k][key]])
            np.testing.assert_array_equal(joined, straight[k][key])


def test_order_keeps_the_token_cache(cfg, small_config):
    """The order only changes how batches are drawn: the same token shards (cache key), so
    saved iterator states of shuffled runs keep their data fingerprint."""
    shuffled = small_config(cfg.data.corpus, cfg.data.cache_dir)
    assert load_shards(cfg.data, TOK)[2] == load_shards(shuffled.data, TOK)[2]


def test_shuffled_state_is_refused_and_validation_rows_start_fresh(cfg, small_config):
    shuffled = small_config(cfg.data.corpus, cfg.data.cache_dir)
    old = make_batches(shuffled, "train", TOK)
    next(old)
    it = make_batches(cfg, "train", TOK)
    with pytest.raises(ValueError, match="order=None in the saved state but 'streams' now"):
        it.set_state(old.get_state())
    plain = list(make_batches(shuffled, "validation", TOK))
    streamed = list(make_batches(cfg, "validation", TOK))
    assert len(plain) == len(streamed)
    for want, got in zip(plain, streamed, strict=True):
        assert set(got) == set(want) | {CONTINUES}
        assert all(np.array_equal(want[k], got[k]) for k in want)
        np.testing.assert_array_equal(got[CONTINUES], np.zeros(B, np.float32))


def test_config_and_size_errors(cfg, small_config):
    with pytest.raises(ConfigError, match="order"):
        small_config(cfg.data.corpus, cfg.data.cache_dir, "data.order=streams",
                     "data.objective=mlm")  # fmt: skip
    with pytest.raises(ConfigError, match="order"):
        small_config(cfg.data.corpus, cfg.data.cache_dir, "data.order=streams",
                     "data.format=chat")  # fmt: skip
    big = small_config(cfg.data.corpus, cfg.data.cache_dir, "data.order=streams",
                       "train.batch_size=4096")  # fmt: skip
    with pytest.raises(ValueError, match=r"fewer than train\.batch_size=4096 streams"):
        next(make_batches(big, "train", TOK))
