"""Packing documents into fixed-length rows without padding waste or cross-document attention.

The documents of a split, in a seeded order, form one token stream (each document already
wrapped in BOS ... EOS); row r holds stream tokens [r L, (r + 1) L). A document may run over a
row boundary and continue in the next row; inside a row each document piece is its own segment:
    segment_ids  1, 2, ... per piece in the row, 0 on padding (only the last row is padded)
    positions    restart at 0 at the start of every piece
    targets      the next stream token; loss_mask is 1 only where that token exists and belongs
                 to the same document (so a row's last token is still trained when its document
                 continues in the next row)
Attention masks built from segment_ids therefore never cross a document boundary, and every
token of the split is an input exactly once per epoch. This is "concatenate then split" packing
(Raffel et al. 2020, T5, sec. 3.1.2; Krell et al. 2021 for segment-aware attention) made random
access: any row is computed from the memory-mapped shard with one `searchsorted`, which is what
lets grain shuffle rows, shard them over processes and resume from a single index.

`pack_reference` builds the same rows with a plain Python loop; the tests compare the two.
"""

from __future__ import annotations

import numpy as np

from llm.data.shards import TokenShard

Row = dict[str, np.ndarray]


class PackedRows:
    """Random-access rows of length L over the documents of `shard` taken in `order`."""

    def __init__(self, shard: TokenShard, seq_len: int, pad_id: int, order: np.ndarray):
        self.shard, self.seq_len, self.pad_id = shard, seq_len, pad_id
        self.order = np.asarray(order, dtype=np.int64)
        lengths = np.diff(shard.offsets)[self.order]
        self.starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # [N + 1]
        self.total = int(self.starts[-1])

    def __len__(self) -> int:
        return -(-self.total // self.seq_len)

    def __getitem__(self, r: int) -> Row:
        L = self.seq_len
        if r * L >= self.total:  # past the end (validation rounds up to whole batches)
            return self.padding_row()
        idx = r * L + np.arange(L + 1, dtype=np.int64)  # stream positions of inputs + 1 target
        valid = idx < self.total
        idx = np.minimum(idx, self.total - 1)
        doc = np.searchsorted(self.starts, idx, side="right") - 1  # rank of each token's document
        source = self.shard.offsets[self.order[doc]] + idx - self.starts[doc]
        tok = np.where(valid, self.shard.tokens[source], self.pad_id).astype(np.int32)
        inputs_valid = valid[:L]
        loss_mask = inputs_valid & valid[1:] & (doc[1:] == doc[:L])
        piece_start = np.maximum(self.starts[doc[:L]], r * L)
        return {
            "inputs": tok[:L],
            "targets": np.where(loss_mask, tok[1:], self.pad_id).astype(np.int32),
            "segment_ids": np.where(inputs_valid, doc[:L] - doc[0] + 1, 0).astype(np.int32),
            "positions": np.where(inputs_valid, idx[:L] - piece_start, 0).astype(np.int32),
            "loss_mask": loss_mask.astype(np.float32),
        }

    def padding_row(self) -> Row:
        pad = np.full(self.seq_len, self.pad_id, np.int32)
        zeros = np.zeros(self.seq_len, np.int32)
        return {
            "inputs": pad,
            "targets": pad.copy(),
            "segment_ids": zeros,
            "positions": zeros.copy(),
            "loss_mask": zeros.astype(np.float32),
        }


def count_bytes(tokenizer, targets_BL: np.ndarray, mask_BL: np.ndarray) -> int:
    """UTF-8 bytes the masked targets of packed rows ([B, L] or one row [L]) decode to,
    row by row (special ids decode to nothing): the denominator of bits per byte."""
    total = 0
    for ids, mask in zip(np.atleast_2d(targets_BL), np.atleast_2d(mask_BL), strict=True):
        total += len(tokenizer.decode([int(i) for i in ids[mask > 0]]).encode("utf-8"))
    return total


def pack_reference(docs: list[list[int]], seq_len: int, pad_id: int) -> list[Row]:
    """The same packing with Python lists: one pass over documents, one token at a time."""
    stream = [(tok, d) for d, ids in enumerate(docs) for tok in ids]
    rows = []
    for start in range(0, len(stream), seq_len):
        row = {k: [] for k in ("inputs", "targets", "segment_ids", "positions", "loss_mask")}
        segment, position, prev_doc = 0, 0, None
        for t in range(start, start + seq_len):
            if t >= len(stream):
                for key, value in zip(row, (pad_id, pad_id, 0, 0, 0.0), strict=True):
                    row[key].append(value)
                continue
            tok, d = stream[t]
            if d != prev_doc:
                segment, position, prev_doc = segment + 1, 0, d
            same = t + 1 < len(stream) and stream[t + 1][1] == d
            row["inputs"].append(tok)
            row["targets"].append(stream[t + 1][0] if same else pad_id)
            row["segment_ids"].append(segment)
            row["positions"].append(position)
            row["loss_mask"].append(1.0 if same else 0.0)
            position += 1
        dtypes = {"loss_mask": np.float32}
        rows.append({k: np.asarray(v, dtype=dtypes.get(k, np.int32)) for k, v in row.items()})
    return rows
