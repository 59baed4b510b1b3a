"""Seq2seq batches (llm/data/seq2seq.py): the pair row layout, span corruption as pairs (its
inverse reconstructs the text), decoder-only rows, the pipeline and the data refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm.data import make_batches
from llm.data.objectives import uncorrupt
from llm.data.seq2seq import (
    ENCDEC_LEAVES,
    check_seq2seq_data,
    decoder_row,
    pair_row,
    span_corruption_pair_row,
    span_corruption_shapes,
)
from llm.tokenizers import ByteTokenizer

TOK = ByteTokenizer()
BOS, EOS, PAD = TOK.bos_id, TOK.eos_id, TOK.pad_id
# arch t5 fixes RMSNorm and relative positions only (llm/config/model.py T5_FIXED)
T5 = (
    "model.arch=t5", "loss.name=seq2seq", "model.norm=rmsnorm", "model.pos_encoding=none",
    "model.vocab_size=272",
)  # fmt: skip


def test_pair_row_layout():
    row = pair_row([5, 6, 7], [8, 9], 5, 4, start_id=BOS, eos_id=EOS, pad_id=PAD)
    np.testing.assert_array_equal(row["encoder_inputs"], [5, 6, 7, PAD, PAD])
    np.testing.assert_array_equal(row["encoder_segment_ids"], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(row["inputs"], [BOS, 8, 9, PAD])  # start id first
    np.testing.assert_array_equal(row["targets"], [8, 9, EOS, PAD])  # target, then EOS
    np.testing.assert_array_equal(row["segment_ids"], [1, 1, 1, 0])
    np.testing.assert_array_equal(row["loss_mask"], [1, 1, 1, 0])
    with pytest.raises(ValueError, match="exceeds"):
        pair_row([5], [1, 2, 3, 4], 5, 4, start_id=BOS, eos_id=EOS, pad_id=PAD)


def test_span_corruption_row_reconstructs_the_text():
    L, tokens = 48, np.arange(10, 58, dtype=np.int32)
    packed = {"inputs": tokens, "segment_ids": np.r_[np.ones(40), np.zeros(8)].astype(np.int32)}
    S, T = span_corruption_shapes(L, 0.15, 3.0)
    for seed in range(5):
        row = span_corruption_pair_row(
            packed, np.random.default_rng(seed), seq_len=L, density=0.15, mean_span=3.0,
            sentinel_start=TOK.vocab_size, start_id=BOS, eos_id=EOS, pad_id=PAD,
        )  # fmt: skip
        assert row["encoder_inputs"].shape == (S,) and row["targets"].shape == (T,)
        source = row["encoder_inputs"][row["encoder_segment_ids"] > 0]
        target = row["targets"][row["loss_mask"] > 0]
        assert target[-1] == EOS
        np.testing.assert_array_equal(row["inputs"][1 : len(target)], target[:-1])
        original = uncorrupt(source, target[:-1], TOK.vocab_size)
        np.testing.assert_array_equal(original, tokens[:40])  # padding tokens never enter


def test_decoder_row_trains_the_target_only():
    ids = {"bos": BOS, "eos": EOS, "pad": PAD, "sep": TOK.encode("\n")}
    src, tgt = TOK.encode("ab c"), TOK.encode("c ab")
    row = decoder_row(src, tgt, 16, ids=ids)
    trained = row["targets"][row["loss_mask"] > 0].tolist()
    assert trained == [*tgt, EOS]
    n = 1 + len(src) + 1 + len(tgt)  # BOS source SEP target: the input positions
    np.testing.assert_array_equal(row["inputs"][:n], [BOS, *src, *ids["sep"], *tgt])
    np.testing.assert_array_equal(row["segment_ids"], np.arange(16) < n)
    np.testing.assert_array_equal(row["positions"][:n], np.arange(n))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_span_corruption_batches_from_packed_text(txt_corpus, cache, small_config):
    folder, _ = txt_corpus
    cfg = small_config(folder, cache, "data.objective=span_corruption", *T5)
    batch = next(make_batches(cfg, "train", TOK))
    S, T = span_corruption_shapes(32, 0.15, 3.0)
    assert set(batch) == set(ENCDEC_LEAVES)
    assert batch["encoder_inputs"].shape == (8, S) and batch["inputs"].shape == (8, T)
    sentinels = batch["encoder_inputs"] >= TOK.vocab_size
    assert sentinels.any() and (batch["encoder_inputs"] < cfg.model.vocab_size).all()
    # every sentinel of the source opens its span in the target, in the same order
    for b in range(8):
        src = batch["encoder_inputs"][b][batch["encoder_segment_ids"][b] > 0]
        tgt = batch["targets"][b][batch["loss_mask"][b] > 0]
        assert src[src >= TOK.vocab_size].tolist() == tgt[tgt >= TOK.vocab_size].tolist()
    # 32 tokens: round(0.15 * 32) = 5 noise tokens in round(5 / 3) = 2 spans, 2 sentinels
    check_seq2seq_data(cfg, TOK)


def test_refusals(txt_corpus, cache, small_config):
    folder, _ = txt_corpus
    small = small_config(folder, cache, "data.objective=span_corruption", *T5[:4])  # 259 ids
    with pytest.raises(ValueError, match=r"model\.vocab_size=259 does not cover.*>= 261"):
        check_seq2seq_data(small, TOK)
    decoder = small_config(folder, cache, "data.objective=span_corruption")
    with pytest.raises(ValueError, match=r"needs model\.arch=t5 and loss\.name=seq2seq"):
        check_seq2seq_data(decoder, TOK)
    text_t5 = small_config(folder, cache, *T5)
    with pytest.raises(ValueError, match="trains on \\(source, target\\) pairs"):
        check_seq2seq_data(text_t5, TOK)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    words = [f"w{i} x{i % 7} y{i % 5}" for i in range(40)]
    path.write_text("".join(json.dumps({"source": w, "target": w[::-1]}) + "\n" for w in words))
    return path


def test_pair_file_batches_in_both_layouts(pairs_file, cache, small_config):
    fmt = ("data.format=seq2seq", "data.val_fraction=0.25")
    encdec = small_config(pairs_file, cache, *fmt, *T5)
    decoder = small_config(pairs_file, cache, *fmt, "loss.name=sft")
    for split in ("train", "validation"):
        a, b = next(make_batches(encdec, split, TOK)), next(make_batches(decoder, split, TOK))
        assert set(a) == set(ENCDEC_LEAVES) and a["inputs"].shape == (8, 32)
        assert set(b) == {"inputs", "targets", "positions", "segment_ids", "loss_mask"}
        for r in range(8):  # the same pair, in the same order, in both layouts
            source = TOK.decode(a["encoder_inputs"][r][a["encoder_segment_ids"][r] > 0])
            target = TOK.decode(a["targets"][r][a["loss_mask"][r] > 0])
            assert target == source[::-1]
            assert TOK.decode(b["targets"][r][b["loss_mask"][r] > 0]) == target
    val = list(make_batches(encdec, "validation", TOK))
    assert sum(int(v["encoder_segment_ids"][:, 0].sum()) for v in val) == 10  # 40 x 0.25
