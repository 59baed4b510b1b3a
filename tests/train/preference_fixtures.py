"""Preference pairs for the loss tests, in the batch layout of llm/data/preference.py.

Each example is rendered with the chat template (`llm.data.sft.render`: the mask covers the
assistant's completion and its end-of-turn token) and laid out as one right-padded row
(`llm.data.sft.build_row`); a pair stacks the chosen and the rejected row, [2, L]. The toy
preference is learnable by a tiny byte model in a few dozen steps and generalises to held-out
prompts: the chosen completion is a fragment of a Shakespeare line, the rejected one is the
same fragment in upper case.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from train_fixtures import TEXT

from llm.data.sft import build_row, render
from llm.model import forward
from llm.tokenizers import load_tokenizer

LEAVES = ("inputs", "positions", "segment_ids", "targets", "loss_mask")
SEQ_LEN = 80  # the longest rendered example of `fragments` is 70 tokens
PAIR_OVERRIDES = (f"model.max_seq_len={SEQ_LEN}", f"train.seq_len={SEQ_LEN}", "train.batch_size=8")


def numpy_pair_logps(cfg, model, batch):
    """[B, 2] summed log-probs of each pair's completions by a plain forward, float64."""
    B, _, L = batch["inputs"].shape
    flat = {k: jnp.asarray(batch[k]).reshape(B * 2, L) for k in LEAVES}
    run = jax.jit(lambda m, x, p, s: forward(cfg.model, m, x, positions_BL=p, segment_ids_BL=s))
    logits = run(model, flat["inputs"], flat["positions"], flat["segment_ids"]).logits_BLV
    x = np.asarray(logits, np.float64)
    logp = (
        x
        - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - x.max(-1, keepdims=True)
    )
    picked = np.take_along_axis(logp, np.asarray(flat["targets"])[..., None], -1)[..., 0]
    mask = np.asarray(flat["loss_mask"], np.float64)
    lengths = np.maximum(mask.sum(-1), 1.0)  # a padding pair's empty completion: one token
    return (picked * mask).sum(-1).reshape(B, 2), lengths.reshape(B, 2)


def tokenizer():
    return load_tokenizer("byte")


def row(tok, prompt: str, completion: str, seq_len: int) -> dict[str, np.ndarray]:
    """One example (user prompt, assistant completion) as a right-padded SFT row."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    return build_row([render(tok, messages)], seq_len, tok.pad_id)


def stack(tok, rows: Sequence[Sequence[dict]], seq_len: int, n_pad: int = 0) -> dict:
    """[B, 2, L] leaves of `rows` (each a pair of rows), plus `n_pad` padding pairs (weight 0)."""
    pad = {k: np.zeros(seq_len, np.float32 if k == "loss_mask" else np.int32) for k in LEAVES}
    pad["inputs"] = pad["targets"] = np.full(seq_len, tok.pad_id, np.int32)
    pairs = [list(p) for p in rows] + [[pad, pad]] * n_pad
    out = {k: np.stack([np.stack([r[k] for r in p]) for p in pairs]) for k in LEAVES}
    out["weight"] = np.array([1.0] * len(rows) + [0.0] * n_pad, np.float32)
    return out


def fragments(n: int, seed: int, held_out: bool = False, words: int = 3) -> list[tuple[str, str]]:
    """(prompt, completion) pairs: two words of TEXT, then the `words` words after them;
    training pairs start in the first two thirds of TEXT, held-out ones in the last third."""
    tokens = TEXT.split()
    cut = 2 * len(tokens) // 3
    lo, hi = (cut, len(tokens) - words - 2) if held_out else (0, cut)
    rng = np.random.default_rng(seed)
    out = []
    for start in rng.integers(lo, hi, n):
        prompt = " ".join(tokens[start : start + 2])
        out.append((prompt, " ".join(tokens[start + 2 : start + 2 + words]).lower()))
    return out


def case_pairs(
    tok, n: int, seed: int, seq_len: int = SEQ_LEN, n_pad: int = 0, held_out: bool = False
) -> dict:
    """n pairs: chosen = the fragment as written (lower case), rejected = upper case."""
    rows = [
        (row(tok, p, c, seq_len), row(tok, p, c.upper(), seq_len))
        for p, c in fragments(n, seed, held_out)
    ]
    return stack(tok, rows, seq_len, n_pad)


def write_case_jsonl(path: Path, words: int = 3) -> int:
    """The case preference as `data.format=preference` JSONL, one record per start word of
    TEXT (no two records alike); returns how many."""
    tokens = TEXT.split()
    with path.open("w") as f:
        for start in range(len(tokens) - words - 2):
            chosen = " ".join(tokens[start + 2 : start + 2 + words]).lower()
            prompt = " ".join(tokens[start : start + 2])
            record = {"prompt": prompt, "chosen": chosen, "rejected": chosen.upper()}
            f.write(json.dumps(record) + "\n")
    return len(tokens) - words - 2


def kto_batch(
    tok, n: int, seed: int, seq_len: int = SEQ_LEN, n_pad: int = 0, held_out: bool = False
) -> dict:
    """n unpaired examples, half desirable (lower case) and half undesirable (upper case),
    each with its mismatched row: the same prompt with the next example's completion."""
    frags = fragments(n, seed, held_out)
    label = np.arange(n) % 2 == 0
    comp = [c if good else c.upper() for (_, c), good in zip(frags, label, strict=True)]
    rows = [
        (row(tok, p, comp[i], seq_len), row(tok, p, comp[(i + 1) % n], seq_len))
        for i, (p, _) in enumerate(frags)
    ]
    out = stack(tok, rows, seq_len, n_pad)
    out["label"] = np.concatenate([label.astype(np.float32), np.zeros(n_pad, np.float32)])
    return out


class Batches:
    """An endless resumable stream of B-sized batches drawn from a fixed set (seeded order)."""

    def __init__(self, data: dict[str, np.ndarray], batch_size: int, seed: int = 0):
        self.data, self.B, self.seed, self.index = data, batch_size, seed, 0

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        n = len(self.data["weight"])
        pick = np.random.default_rng([self.seed, self.index]).choice(n, self.B, replace=False)
        self.index += 1
        return {k: v[pick] for k, v in self.data.items()}

    def get_state(self) -> dict[str, int]:
        return {"next_batch": self.index}

    def set_state(self, state: dict[str, int]) -> None:
        self.index = int(state["next_batch"])


def split_batches(data: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    """One pass over `data` in order, in batches of `batch_size` (validation)."""
    n = len(data["weight"])
    if n % batch_size:
        raise ValueError(f"{n} examples are not whole batches of {batch_size}")
    return [{k: v[i : i + batch_size] for k, v in data.items()} for i in range(0, n, batch_size)]
