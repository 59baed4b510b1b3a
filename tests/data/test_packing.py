"""Packing: parity with the plain reference, no token lost or duplicated, no document mixing."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm.data.packing import PackedRows, pack_reference
from llm.data.shards import read_shard, write_shard

PAD = 0


def _shard(tmp_path, docs):
    texts = [str(i) for i in range(len(docs))]
    return write_shard(tmp_path, texts, lambda t: docs[int(t)], vocab_size=100_000, threads=1)


@pytest.mark.parametrize("seq_len", [1, 7, 16])
def test_rows_match_reference(tmp_path, seq_len):
    rng = np.random.default_rng(seq_len)
    docs = [rng.integers(1, 50, size=int(n)).tolist() for n in rng.integers(1, 40, size=12)]
    order = rng.permutation(len(docs))
    rows = PackedRows(_shard(tmp_path, docs), seq_len, PAD, order)
    expected = pack_reference([docs[i] for i in order], seq_len, PAD)
    assert len(rows) == len(expected)
    for r, ref in enumerate(expected):
        for key, value in rows[r].items():
            np.testing.assert_array_equal(value, ref[key], err_msg=f"row {r} {key}")
            assert value.dtype == ref[key].dtype


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 30), min_size=1, max_size=15),
    seq_len=st.integers(1, 24),
)
def test_every_token_once_and_segments_never_mix_documents(tmp_path_factory, lengths, seq_len):
    """Token ids are unique across the corpus, so counting them shows exactly-once coverage."""
    docs, next_id = [], 1
    for n in lengths:
        docs.append(list(range(next_id, next_id + n)))
        next_id += n
    doc_of = {tok: d for d, ids in enumerate(docs) for tok in ids}
    shard = _shard(tmp_path_factory.mktemp("s"), docs)
    rows = PackedRows(shard, seq_len, PAD, np.arange(len(docs))[::-1])
    counts = collections.Counter()
    for r in range(len(rows)):
        row = rows[r]
        valid = row["segment_ids"] > 0
        counts.update(row["inputs"][valid].tolist())
        assert (row["inputs"][~valid] == PAD).all() and (row["loss_mask"][~valid] == 0).all()
        for seg in np.unique(row["segment_ids"][valid]):
            toks = row["inputs"][row["segment_ids"] == seg]
            assert len({doc_of[t] for t in toks}) == 1  # one segment, one document
            np.testing.assert_array_equal(np.diff(toks), 1)  # a contiguous run of it
            np.testing.assert_array_equal(
                row["positions"][row["segment_ids"] == seg], np.arange(len(toks))
            )
        trained = row["loss_mask"] == 1
        # a trained target is the next token of the same document
        pairs = zip(row["inputs"][trained], row["targets"][trained], strict=True)
        assert all(doc_of[t] == doc_of[i] and t == i + 1 for i, t in pairs)
    assert counts == collections.Counter(range(1, next_id))
    assert sum(rows[r]["loss_mask"].sum() for r in range(len(rows))) == sum(
        max(n - 1, 0) for n in lengths
    )  # every within-document next-token pair is trained exactly once


def test_shard_roundtrip_and_errors(tmp_path):
    docs = [[5, 6, 7], [], [65_535]]
    shard = _shard(tmp_path / "a", docs)
    assert shard.tokens.dtype == np.uint32  # vocab 100k does not fit uint16
    again = read_shard(tmp_path / "a")
    assert [again.document(i).tolist() for i in range(3)] == docs
    small = write_shard(tmp_path / "b", ["x"], lambda t: [1, 2], vocab_size=259)
    assert small.tokens.dtype == np.uint16
    from llm.data.shards import ShardError

    with pytest.raises(ShardError, match=r"document 0: token id 300 outside vocabulary \[0, 259\)"):
        write_shard(tmp_path / "c", ["x"], lambda t: [1, 300], vocab_size=259)
    with open(tmp_path / "a" / "tokens.bin", "r+b") as f:
        f.truncate(4)
    with pytest.raises(ShardError, match=r"do not match meta\.json"):
        read_shard(tmp_path / "a")
    with pytest.raises(ShardError, match="not a token shard"):
        read_shard(tmp_path)
