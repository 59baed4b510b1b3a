"""Denoising objectives for encoder models, as transforms over token arrays.

`mlm_mask`: BERT's masked language modelling (Devlin et al. 2019, sec. 3.1): each ordinary token
is selected with probability `rate`; a selected token is replaced by MASK 80% of the time, by a
random token 10%, and left unchanged 10%; the loss is taken on selected tokens only. It maps a
packed row (see packing.py) to a row of the same keys, so encoder batches keep segment ids.

`span_corrupt`: T5's span corruption (Raffel et al. 2020, sec. 3.1.4): about `density` of the
tokens, in spans of mean length `mean_span`, are cut out; the input keeps the rest with one
sentinel per span, and the target lists each sentinel followed by the tokens it replaced.
Sentinels are ids `sentinel_start + i`, above the tokenizer's vocabulary by default, so the
encoder-decoder model's vocabulary must include them. `span_corruption_row` applies it to the
tokens of a packed row and pads to shapes that depend only on L, for `grain.random_map`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Row = dict[str, np.ndarray]


def mlm_mask_id(tokenizer: Any) -> int:
    """The id MLM writes over selected tokens: the tokenizer's [MASK], else one past its vocab
    (a model trained with MLM needs an embedding row for it: `model.vocab_size` > this id)."""
    return getattr(tokenizer, "mask_id", tokenizer.vocab_size)


def mlm_mask(
    row: Row,
    rng: np.random.Generator,
    *,
    rate: float,
    mask_id: int,
    vocab_size: int,
    special_ids: tuple[int, ...],
    pad_id: int,
) -> Row:
    """BERT 80/10/10 masking of `row["inputs"]`; targets are the original selected tokens."""
    tokens = row["inputs"]
    ordinary = (row["segment_ids"] > 0) & ~np.isin(tokens, special_ids)
    selected = ordinary & (rng.random(tokens.shape) < rate)
    action = rng.random(tokens.shape)
    random_tokens = rng.integers(0, vocab_size, size=tokens.shape, dtype=np.int32)
    inputs = np.where(selected & (action < 0.8), mask_id, tokens)
    inputs = np.where(selected & (action >= 0.8) & (action < 0.9), random_tokens, inputs)
    return {
        **row,
        "inputs": inputs.astype(np.int32),
        "targets": np.where(selected, tokens, pad_id).astype(np.int32),
        "loss_mask": selected.astype(np.float32),
    }


def random_segmentation(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths of `k` non-empty pieces that sum to `n`, uniformly over all such splits."""
    cuts = np.sort(rng.choice(n - 1, size=k - 1, replace=False) + 1) if k > 1 else []
    return np.diff(np.concatenate([[0], cuts, [n]])).astype(np.int64)


def span_corrupt(
    tokens: np.ndarray,
    rng: np.random.Generator,
    *,
    sentinel_start: int,
    density: float = 0.15,
    mean_span: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of T5 span corruption for one sequence of at least 2 tokens."""
    n = len(tokens)
    if n < 2:
        raise ValueError(f"span corruption needs at least 2 tokens, got {n}")
    num_noise, num_spans = _noise_counts(n, density, mean_span)
    noise_lengths = random_segmentation(num_noise, num_spans, rng)
    keep_lengths = random_segmentation(n - num_noise, num_spans, rng)
    inputs, targets, start = [], [], 0
    for i, (keep, noise) in enumerate(zip(keep_lengths, noise_lengths, strict=True)):
        inputs.extend(tokens[start : start + keep])
        start += keep
        inputs.append(sentinel_start + i)
        targets.append(sentinel_start + i)
        targets.extend(tokens[start : start + noise])
        start += noise
    return np.asarray(inputs, dtype=np.int32), np.asarray(targets, dtype=np.int32)


def _noise_counts(n: int, density: float, mean_span: float) -> tuple[int, int]:
    num_noise = int(np.clip(round(n * density), 1, n - 1))
    num_spans = int(np.clip(round(num_noise / mean_span), 1, min(num_noise, n - num_noise)))
    return num_noise, num_spans


def span_corruption_lengths(max_len: int, density: float, mean_span: float) -> tuple[int, int]:
    """Longest (inputs, targets) that `span_corrupt` returns for 2..max_len tokens."""
    counts = [(n, *_noise_counts(n, density, mean_span)) for n in range(2, max_len + 1)]
    n_in = max(n - noise + spans for n, noise, spans in counts)
    n_out = max(noise + spans for _, noise, spans in counts)
    return n_in, n_out


def span_sentinels(max_len: int, density: float, mean_span: float) -> int:
    """Most sentinels `span_corrupt` writes for 2..max_len tokens (ids the vocab must cover)."""
    return max(_noise_counts(n, density, mean_span)[1] for n in range(2, max_len + 1))


def span_corruption_row(
    row: Row,
    rng: np.random.Generator,
    *,
    sentinel_start: int,
    pad_id: int,
    density: float = 0.15,
    mean_span: float = 3.0,
) -> Row:
    """A packed row's tokens -> fixed-shape encoder inputs and decoder targets with masks.

    Shapes depend only on the row length L (`span_corruption_lengths`), so rows batch.
    """
    tokens = row["inputs"][row["segment_ids"] > 0]
    n_in, n_out = span_corruption_lengths(len(row["inputs"]), density, mean_span)
    inputs, targets = np.zeros(0, np.int32), np.zeros(0, np.int32)
    if len(tokens) >= 2:
        inputs, targets = span_corrupt(
            tokens, rng, sentinel_start=sentinel_start, density=density, mean_span=mean_span
        )
    pad = lambda x, n: np.pad(x, (0, n - len(x)), constant_values=pad_id)  # noqa: E731
    return {
        "inputs": pad(inputs, n_in).astype(np.int32),
        "input_mask": (np.arange(n_in) < len(inputs)).astype(np.float32),
        "targets": pad(targets, n_out).astype(np.int32),
        "target_mask": (np.arange(n_out) < len(targets)).astype(np.float32),
    }


def uncorrupt(inputs: np.ndarray, targets: np.ndarray, sentinel_start: int) -> np.ndarray:
    """Inverse of `span_corrupt`: puts each sentinel's span back (used to test it)."""
    spans: dict[int, list[int]] = {}
    current = None
    for tok in targets.tolist():
        if tok >= sentinel_start:
            current = tok
            spans[current] = []
        else:
            spans[current].append(tok)  # type: ignore[index]
    out: list[int] = []
    for tok in inputs.tolist():
        out.extend(spans[tok] if tok >= sentinel_start else [tok])
    return np.asarray(out, dtype=np.int32)
