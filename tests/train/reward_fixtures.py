"""Preference pairs for the reward-model tests, in the batch layout of llm/data/preference.py.

A toy task a 2-layer byte model can learn in a few dozen steps: the prompt asks for a line,
the chosen completion is a few words of English (TEXT), the rejected one the same words each
spelled backwards, so both sides hold the same bytes and only their order tells them apart.
Rows are laid out by the data pipeline's own `llm.data.preference.pair_rows`, so the tests
train on exactly what `data.format=preference` feeds: index 0 of the pair axis is the chosen
side, 1 the rejected side.
"""

from __future__ import annotations

import numpy as np
from train_fixtures import tiny_config

from llm.align.reward_model import prompt_messages
from llm.data.preference import Pair, pair_rows

WORDS = (
    "to be or not to be that is the question whether tis nobler in the mind to suffer the "
    "slings and arrows of outrageous fortune or to take arms against a sea of troubles"
).split()


def toy_records(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` {"prompt", "chosen", "rejected"} records (3 words each side)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start = int(rng.integers(0, len(WORDS) - 3))
        words = WORDS[start : start + 3]
        out.append(
            {
                "prompt": "line?",
                "chosen": " ".join(words),
                "rejected": " ".join(w[::-1] for w in words),
            }
        )
    return out


def pair_batch(tokenizer, records, L: int, margins=None, weights=None) -> dict[str, np.ndarray]:
    """[B, 2, L] row leaves, `weight` [B] and `margin` [B] of the records."""
    cfg = tiny_config("unused", "loss.name=reward", f"model.max_seq_len={L}", f"train.seq_len={L}")
    margins = [None] * len(records) if margins is None else margins
    pairs = [
        Pair(prompt_messages(r["prompt"]), r["chosen"], r["rejected"], m, f"toy:{i}")
        for i, (r, m) in enumerate(zip(records, margins, strict=True))
    ]
    batch, report = pair_rows(cfg, pairs, tokenizer)
    assert report.examples == len(records), report  # every toy pair fits L
    if weights is not None:
        batch["weight"] = np.asarray(weights, np.float32)
    return batch


class PairBatches:
    """Resumable stream of toy pair batches (the `make_batches` protocol)."""

    def __init__(self, tokenizer, records, batch_size: int, L: int, seed: int = 0):
        self.tok, self.records, self.B, self.L, self.seed = tokenizer, records, batch_size, L, seed
        self.index = 0

    def __iter__(self) -> PairBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.index])
        picked = rng.choice(len(self.records), self.B, replace=False)
        self.index += 1
        return pair_batch(self.tok, [self.records[i] for i in picked], self.L)

    def get_state(self) -> dict[str, int]:
        return {"next_batch": self.index}

    def set_state(self, state: dict[str, int]) -> None:
        self.index = int(state["next_batch"])


def val_batches(tokenizer, records, batch_size: int, L: int) -> list[dict[str, np.ndarray]]:
    """One pass over `records`, the last batch filled with weight-0 padding pairs."""
    out = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        weights = [1.0] * len(chunk) + [0.0] * (batch_size - len(chunk))
        chunk = chunk + [records[0]] * (batch_size - len(chunk))
        out.append(pair_batch(tokenizer, chunk, L, weights=weights))
    return out
