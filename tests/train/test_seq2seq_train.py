"""A tiny T5 trained end to end through `llm.train.train` with span corruption on a text
corpus: the loss falls, validation reports the seq2seq metrics, and the end-of-run samples
decode validation rows with the cross-attention cache (llm/eval/seq2seq.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_fixtures import TEXT

from llm.config import load_config
from llm.eval.seq2seq import seq2seq_samples
from llm.tokenizers import ByteTokenizer
from llm.train import train

T5_TINY = [
    "model.arch=t5", "model.vocab_size=264", "model.d_model=32", "model.n_layers=1",
    "model.n_decoder_layers=1", "model.n_heads=2", "model.d_ff=64", "model.max_seq_len=32",
    "model.activation=relu", "model.norm=rmsnorm", "model.pos_encoding=none",
    "data.objective=span_corruption", "loss.name=seq2seq", "data.tokenizer=byte",
    "data.eval_corpus=null", "data.min_chars=1", "data.val_fraction=0.2",
    "data.dedup_exact=false", "data.near_dup_threshold=null",  # the documents repeat
    "train.batch_size=8", "train.seq_len=32", "train.steps=80", "train.log_every=1",
    "train.eval_every=0", "train.ckpt_every=0", "eval.batches=2", "optim.lr=1e-2",
    "optim.warmup_steps=5",
]  # fmt: skip


@pytest.mark.slow
def test_tiny_t5_span_corruption_run_lowers_the_loss(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(5):  # five documents of the same passage: learnable in 80 steps
        (corpus / f"doc{i}.txt").write_text(TEXT * 3)
    cfg = load_config(None, [*T5_TINY, f"data.corpus={corpus}",
                             f"data.cache_dir={tmp_path / 'cache'}",
                             f"train.run_dir={tmp_path / 'run'}"])  # fmt: skip
    result = train(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert first > 5.0  # about ln(264) = 5.58 at initialisation
    assert last < 0.6 * first, (first, last)
    val = result["val"]
    assert {"loss", "ppl", "bpb", "accuracy", "bytes"} <= set(val) and val["bytes"] > 0
    lines = seq2seq_samples(cfg, result["params"], ByteTokenizer(), 2)
    assert len(lines) == 3 and lines[-1].startswith("exact match of these 2 rows")
    assert "<s0>" in lines[0]  # the source shows its first sentinel
