"""Tiny configs and a small resumable in-memory batch iterator (the `make_batches` protocol).

Batches are windows of a fixed text (byte tokens) at offsets drawn from a generator seeded
by (seed, batch index), so `set_state({"next_batch": i})` continues the exact stream (the
state's key is the pipeline's, `llm.data.pipeline`, which checkpoints check against the step).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llm.config import Config, load_config

TEXT = (
    "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles "
    "and by opposing end them. To die: to sleep; no more; and by a sleep to say we end the "
    "heart-ache and the thousand natural shocks that flesh is heir to. "
)


class SyntheticBatches:
    """Infinite (or `limit`-long) stream of [B, L] byte-token batches over TEXT."""

    def __init__(self, batch_size: int, seq_len: int, seed: int = 0, limit: int | None = None):
        self.tokens = np.frombuffer(TEXT.encode() * 4, np.uint8).astype(np.int32)
        self.B, self.L, self.seed, self.limit = batch_size, seq_len, seed, limit
        self.index = 0

    def __iter__(self) -> SyntheticBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.limit is not None and self.index >= self.limit:
            raise StopIteration
        rng = np.random.default_rng([self.seed, self.index])
        starts = rng.integers(0, len(self.tokens) - self.L - 1, self.B)
        rows = np.stack([self.tokens[s : s + self.L + 1] for s in starts])
        self.index += 1
        return {
            "inputs": rows[:, :-1],
            "targets": rows[:, 1:],
            "segment_ids": np.ones((self.B, self.L), np.int32),
            "positions": np.tile(np.arange(self.L, dtype=np.int32), (self.B, 1)),
            "loss_mask": np.ones((self.B, self.L), np.float32),
        }

    def get_state(self) -> dict[str, int]:
        return {"next_batch": self.index}

    def set_state(self, state: dict[str, int]) -> None:
        self.index = int(state["next_batch"])


TINY = [
    "model.vocab_size=259",
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.d_ff=64",
    "model.max_seq_len=32",
    "train.batch_size=8",
    "train.seq_len=16",
    "train.log_every=1",
    "train.eval_every=0",
    "train.progress_bar=false",
    "train.tensorboard=false",
    "train.peak_flops=1e11",
    "optim.lr=3e-3",
    "optim.warmup_steps=2",
    "eval.batches=2",
]


def tiny_config(run_dir: Path | str = "runs/test", *overrides: str) -> Config:
    """A 2-layer, 32-wide byte-level model: compiles and steps in well under a second."""
    return load_config(None, [*TINY, f"train.run_dir={run_dir}", *overrides])


def dot_shapes(jaxpr) -> list[tuple[int, ...]]:
    """Output shapes of every dot_general in a jaxpr and all its sub-jaxprs (scan, cond, ...):
    a weight gradient is a dot with the weight's shape, so a frozen weight has none."""
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            shapes += [tuple(v.aval.shape) for v in eqn.outvars]
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    shapes += dot_shapes(inner)
    return shapes
