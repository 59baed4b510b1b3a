"""Held-out metrics of any per-token model, counted exactly as `llm/train/evaluate.py` counts.

A baseline that gives log p(token | its document's history) for every token of a split
(`logprobs_T`, 0 at each document's first token) is scored on the rows the training run
evaluates: the split's documents in their stored order, packed into rows of `seq_len`
(`llm.data.packing.PackedRows`), the first `max_batches * batch_size` rows (all of them for
None). A row's masked targets are the stream tokens r L + 1 .. r L + L that continue their
document; tokens are the loss-mask sum, bytes the UTF-8 length of each row's decoded masked
targets, and bits per byte = nats / ln 2 / bytes (Gao et al. 2020, "The Pile"). A count model
conditions on the whole document history where the Transformer sees only its row: the same
targets and bytes, each model with the context it can use.

Bytes are counted by `llm.data.packing.count_bytes`, the function `evaluate` uses.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from llm.config import DataConfig
from llm.data.packing import PackedRows, count_bytes
from llm.data.shards import TokenShard
from llm.data.tokenized import load_shards


def split_documents(data_cfg: DataConfig, tokenizer: Any) -> dict[str, TokenShard]:
    """split name -> token shard of the configured corpus (tokenized once, cached)."""
    shards, _, _ = load_shards(data_cfg, tokenizer)
    return shards


def heldout_metrics(
    logprobs_T: np.ndarray,
    shard: TokenShard,
    tokenizer: Any,
    seq_len: int,
    batch_size: int,
    max_batches: int | None = None,
) -> dict[str, float]:
    """loss (nats/token), ppl, bpb, tokens, bytes of `logprobs_T` over the packed rows."""
    if len(logprobs_T) != shard.num_tokens:
        raise ValueError(f"{len(logprobs_T)} log-probs for a split of {shard.num_tokens} tokens")
    if shard.offsets[0] != 0:
        raise ValueError("the shard's first document must start at token 0")
    rows = PackedRows(shard, seq_len, tokenizer.pad_id, np.arange(shard.num_docs))
    n_rows = len(rows) if max_batches is None else min(len(rows), max_batches * batch_size)
    nats, tokens, n_bytes = 0.0, 0.0, 0
    for r in range(n_rows):
        row = rows[r]
        mask = row["loss_mask"] > 0
        target_pos = r * seq_len + 1 + np.flatnonzero(mask)  # stream positions of the targets
        nats -= float(np.sum(logprobs_T[target_pos]))
        tokens += float(mask.sum())
        n_bytes += count_bytes(tokenizer, row["targets"], row["loss_mask"])
    if tokens == 0:
        raise ValueError("the held-out rows hold no predicted tokens")
    loss = nats / tokens
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 700.0)),
        "bpb": nats / math.log(2) / max(n_bytes, 1),
        "tokens": tokens,
        "bytes": n_bytes,
    }
