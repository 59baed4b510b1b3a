"""Batches of one-example-per-row data (classification, preference pairs), laid out like
`llm.data.pipeline`'s: train rows repeat in a new seeded order every epoch (grain's
`shuffle` + `repeat`, resumable from one integer); validation is one pass padded to whole
batches with copies of the last row at `weight` 0 (a copy, so per-row quantities such as a
mean log-prob stay finite; the losses weight every example by `weight`). Process p of P
takes every P-th slice of each global batch, as the packed pipeline does.
"""

from __future__ import annotations

import grain
import numpy as np


def example_batches(
    rows: dict[str, np.ndarray],
    split: str,
    batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
) -> grain.MapDataset:
    """This process's batches of `rows` (leading axis: examples; a `weight` leaf required)."""
    n = len(rows["weight"])
    if split == "train":
        indices = grain.MapDataset.range(n).shuffle(seed=seed).repeat(None)
    else:
        indices = grain.MapDataset.range(-(-n // batch_size) * batch_size)

    def row(i: int) -> dict[str, np.ndarray]:
        one = {k: v[min(i, n - 1)] for k, v in rows.items()}
        return one if i < n else {**one, "weight": np.float32(0.0)}

    batches = indices.map(row).batch(batch_size // process_count, drop_remainder=True)
    return batches[process_index::process_count]
