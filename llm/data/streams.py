"""Stream order: the packed rows cut into B contiguous streams, one per batch row.

The classic batching of recurrent language models (Zaremba et al. 2014, "Recurrent Neural
Network Regularization", on the Penn Treebank; Mikolov's RNNLM before it): the token stream of
the train split (documents in the seeded order, packed into rows of L tokens by
llm/data/packing.py) is cut into B equal, contiguous streams of S = floor(N / B) rows, and

    global batch k, row b  =  packed row  b S + (k mod S)

so row b of batch k + 1 is the very next L tokens after row b of batch k, and a model that
carries its state from one batch to the next (truncated BPTT, `train.tbptt`) reads each stream
from its beginning to its end. After S batches every stream wraps to its own start (the next
epoch, in the same order: the streams are fixed, as in the classic setup); the last N - B S
rows (fewer than B) are never read, and `StreamRows` logs how many (`unread_rows`, a warning
naming the count and the tokens they hold).

Each row also says whether its first token continues the previous row of its stream, the leaf
`continues` [B] (float32, 1 or 0): 1 exactly when the row is not the first of its stream in
this epoch and it starts inside a document (that document began in the previous row). A model
carrying state zeroes the state of rows with 0, so no information crosses a document boundary
or the wrap. Inside a row documents are separated by segment ids, as in every packed row.

The order is random access: element i of the dataset is (batch i // B, row i % B), so the grain
pipeline (llm/data/pipeline.py) batches, splits over processes and resumes from one integer as
it does for shuffled rows. Validation batches get `continues` = 0 everywhere: every validation
row is scored from a zero state, exactly as without streams.
"""

from __future__ import annotations

import logging

import numpy as np

from llm.data.packing import PackedRows, Row

log = logging.getLogger(__name__)

CONTINUES = "continues"  # the batch leaf: [B] float32, 1 = the row's state carries over


class StreamRows:
    """Random-access rows of `rows` in stream order for a global batch of `batch_size`."""

    def __init__(self, rows: PackedRows, batch_size: int):
        self.rows, self.batch_size = rows, batch_size
        self.stream_rows = len(rows) // batch_size  # S: rows per stream
        if self.stream_rows == 0:
            raise ValueError(
                f"data.order=streams: the train split packs into {len(rows)} rows of "
                f"{rows.seq_len} tokens, fewer than train.batch_size={batch_size} streams; "
                "lower train.batch_size or train.seq_len"
            )
        self.unread_rows = len(rows) - len(self)  # N - B S: they do not fill a stream
        if self.unread_rows:
            log.warning(
                "data.order=streams: the last %d of %d packed train rows (%d tokens at most) "
                "do not fill a stream of %d rows and are never read",
                self.unread_rows, len(rows), self.unread_rows * rows.seq_len, self.stream_rows,
            )  # fmt: skip

    def __len__(self) -> int:
        """Elements in one epoch: B S rows."""
        return self.batch_size * self.stream_rows

    def row_index(self, i: int) -> tuple[int, bool]:
        """(packed row, whether it is not the first of its stream) of element `i`."""
        k, b = divmod(i % len(self), self.batch_size)
        return b * self.stream_rows + k, k > 0

    def __getitem__(self, i: int) -> Row:
        r, inside = self.row_index(i)
        row = self.rows[r]
        continues = inside and self.starts_inside_document(r)
        return {**row, CONTINUES: np.float32(continues)}

    def starts_inside_document(self, r: int) -> bool:
        """Whether row r's first token belongs to a document that began in an earlier row."""
        first = r * self.rows.seq_len
        if first >= self.rows.total:
            return False
        doc = int(np.searchsorted(self.rows.starts, first, side="right")) - 1
        return bool(self.rows.starts[doc] < first)


def with_fresh_state(row: Row) -> Row:
    """A validation row in stream order: scored from a zero state (`continues` = 0)."""
    return {**row, CONTINUES: np.float32(0.0)}
