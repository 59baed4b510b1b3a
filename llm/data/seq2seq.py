"""Sequence-to-sequence batches: (source, target) pairs for an encoder-decoder, or for a decoder.

The encoder-decoder batch (model.arch=t5, loss.name=seq2seq), one example per row:

    encoder_inputs       [B, S] int32  source tokens, then pad
    encoder_segment_ids  [B, S] int32  1 on source tokens, 0 on padding
    inputs               [B, T] int32  decoder inputs: start id (the tokenizer's BOS), target
    targets              [B, T] int32  the target followed by EOS (inputs shifted left by one)
    segment_ids          [B, T] int32  1 on the target's positions (its EOS included), 0 on pad
    loss_mask            [B, T] f32    1 where a target token is predicted

The decoder inputs are given shifted (teacher forcing, Sutskever et al. 2014, arXiv:1409.3215):
the model never shifts. Pairs come from two places:
  * `data.objective=span_corruption` over packed text (T5's pretraining, Raffel et al. 2020,
    arXiv:1910.10683, sec. 3.1.4): each packed row of `train.seq_len` tokens is corrupted by
    `llm.data.objectives.span_corrupt`; S and T depend only on `train.seq_len`
    (`span_corruption_shapes`), and sentinel ids start at the tokenizer's vocabulary size, so
    `model.vocab_size` must cover `span_sentinels` of them (`check_seq2seq_data`).
  * `data.format=seq2seq`: {"source", "target"} JSONL records or a generated task
    (`task:<name>`, llm/data/seq2seq_tasks.py), with S = T = `train.seq_len`.

With `data.format=seq2seq` and any other arch the same pairs become decoder-only rows, the
baseline of the "decoder-only vs encoder-decoder" comparison (bench/seq2seq_compare.py): BOS,
source, SEPARATOR, target, EOS in one row of `train.seq_len` tokens with the causal-LM leaves
(inputs, targets, positions, segment_ids, loss_mask) and `loss_mask` on the target and its EOS
only, so `loss.name=sft` trains exactly the target tokens given the prompt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from llm.data.objectives import span_corrupt, span_corruption_lengths, span_sentinels
from llm.data.seq2seq_tasks import task_pairs
from llm.data.sft import split_examples
from llm.data.sources import SourceError, jsonl_records

Row = dict[str, np.ndarray]
Pair = tuple[str, str]
SEPARATOR = "\n"  # between source and target in a decoder-only row (task lines have none)
ENCDEC_ARCHS = ("t5",)  # archs that read the encoder-decoder batch
TASK_PREFIX = "task:"  # data.corpus naming a generated task instead of a JSONL file
ENCDEC_LEAVES = (
    "encoder_inputs", "encoder_segment_ids", "inputs", "targets", "segment_ids", "loss_mask",
)  # fmt: skip


def pair_row(
    source: Sequence[int], target: Sequence[int], S: int, T: int, *, start_id, eos_id, pad_id
) -> Row:
    """One encoder-decoder row (see the module docstring); the target gets EOS appended."""
    n_src, n_tgt = len(source), len(target) + 1
    if n_src > S or n_tgt > T:
        raise ValueError(f"pair of {n_src} source / {n_tgt} target tokens exceeds {S=}, {T=}")
    enc = np.full(S, pad_id, np.int32)
    enc[:n_src] = source
    dec = np.full(T + 1, pad_id, np.int32)
    dec[: n_tgt + 1] = [start_id, *target, eos_id]
    real_T = (np.arange(T) < n_tgt).astype(np.int32)
    return {
        "encoder_inputs": enc,
        "encoder_segment_ids": (np.arange(S) < n_src).astype(np.int32),
        "inputs": np.where(real_T > 0, dec[:T], pad_id).astype(np.int32),
        "targets": dec[1:].astype(np.int32),
        "segment_ids": real_T,
        "loss_mask": real_T.astype(np.float32),
    }


def empty_pair_row(S: int, T: int, pad_id: int) -> Row:
    """A padding row: no source, nothing predicted (rounds validation up to whole batches)."""
    pad = lambda n: np.full(n, pad_id, np.int32)  # noqa: E731
    zeros = lambda n: np.zeros(n, np.int32)  # noqa: E731
    return {
        "encoder_inputs": pad(S),
        "encoder_segment_ids": zeros(S),
        "inputs": pad(T),
        "targets": pad(T),
        "segment_ids": zeros(T),
        "loss_mask": np.zeros(T, np.float32),
    }


def decoder_row(source: Sequence[int], target: Sequence[int], L: int, *, ids: dict) -> Row:
    """One decoder-only row: BOS source SEP target EOS, loss on the target and its EOS."""
    prompt = [ids["bos"], *source, *ids["sep"]]
    seq = [*prompt, *target, ids["eos"]]
    if len(seq) > L + 1:
        raise ValueError(f"pair of {len(seq)} tokens (with BOS, separator, EOS) exceeds L={L}")
    n = len(seq) - 1  # input positions: every token but the final EOS
    row = {
        "inputs": np.full(L, ids["pad"], np.int32),
        "targets": np.full(L, ids["pad"], np.int32),
        "positions": np.zeros(L, np.int32),
        "segment_ids": np.zeros(L, np.int32),
        "loss_mask": np.zeros(L, np.float32),
    }
    row["inputs"][:n], row["targets"][:n] = seq[:-1], seq[1:]
    row["positions"][:n], row["segment_ids"][:n] = np.arange(n), 1
    row["loss_mask"][len(prompt) - 1 : n] = 1.0  # predicting target[0] .. EOS
    return row


# ----------------------------------------------------------------------------- span corruption


def span_corruption_shapes(seq_len: int, density: float, mean_span: float) -> tuple[int, int]:
    """(S, T) of span-corruption rows cut from `seq_len` packed tokens (T counts the EOS)."""
    S, n_out = span_corruption_lengths(seq_len, density, mean_span)
    return S, n_out + 1


def span_corruption_pair_row(
    row: Row, rng: np.random.Generator, *, seq_len: int, density: float, mean_span: float,
    sentinel_start: int, start_id: int, eos_id: int, pad_id: int,
) -> Row:  # fmt: skip
    """A packed row's tokens (all its pieces, in order) -> one span-corrupted pair row."""
    S, T = span_corruption_shapes(seq_len, density, mean_span)
    tokens = row["inputs"][row["segment_ids"] > 0]
    if len(tokens) < 2:
        return empty_pair_row(S, T, pad_id)
    source, target = span_corrupt(
        tokens, rng, sentinel_start=sentinel_start, density=density, mean_span=mean_span
    )
    return pair_row(source, target, S, T, start_id=start_id, eos_id=eos_id, pad_id=pad_id)


def span_corruption_transform(cfg: Any, tokenizer: Any):
    """The `grain` random_map of `data.objective=span_corruption` (packed row -> pair row)."""

    def transform(row: Row, rng: np.random.Generator) -> Row:
        return span_corruption_pair_row(
            row, rng, seq_len=cfg.train.seq_len, density=cfg.data.span_density,
            mean_span=cfg.data.span_mean_length, sentinel_start=tokenizer.vocab_size,
            start_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
        )  # fmt: skip

    return transform


def check_seq2seq_data(cfg: Any, tokenizer: Any) -> None:
    """Refuses data that the model or loss would misread: encoder-decoder batches for a
    decoder, text batches for an encoder-decoder, sentinels outside the vocabulary."""
    arch, data, loss = cfg.model.arch, cfg.data, cfg.loss.name
    encdec = arch in ENCDEC_ARCHS
    if data.objective == "span_corruption" and not (encdec and loss == "seq2seq"):
        raise ValueError(
            f"data.objective=span_corruption makes encoder-decoder batches: it needs "
            f"model.arch=t5 and loss.name=seq2seq (got arch={arch!r}, loss={loss!r})"
        )
    if encdec and data.objective != "span_corruption" and data.format != "seq2seq":
        raise ValueError(
            f"model.arch={arch!r} trains on (source, target) pairs: use data.objective="
            f"span_corruption on text or data.format=seq2seq (got format={data.format!r}, "
            f"objective={data.objective!r})"
        )
    if data.format == "seq2seq" and not encdec and loss not in ("sft", "causal_lm"):
        raise ValueError(
            f"data.format=seq2seq with model.arch={arch!r} makes decoder-only rows "
            f"(prompt = source + separator) for loss.name=sft or causal_lm, not {loss!r}"
        )
    if data.objective == "span_corruption":
        needed = tokenizer.vocab_size + span_sentinels(
            cfg.train.seq_len, data.span_density, data.span_mean_length
        )
        if needed > cfg.model.vocab_size:
            raise ValueError(
                f"model.vocab_size={cfg.model.vocab_size} does not cover the span-corruption "
                f"sentinels: ids {tokenizer.vocab_size}..{needed - 1} (data.tokenizer="
                f"{data.tokenizer!r} has {tokenizer.vocab_size} ids; train.seq_len="
                f"{cfg.train.seq_len} needs {needed - tokenizer.vocab_size} sentinels): "
                f"set model.vocab_size >= {needed}"
            )


# ----------------------------------------------------------------------------- pair datasets


def read_pairs(spec: str) -> list[Pair]:
    """The (source, target) records of a JSONL file or folder; a bad one names file:line."""
    pairs = []
    for record, where in jsonl_records(spec, "seq2seq"):
        ok = isinstance(record, dict) and all(
            isinstance(record.get(k), str) for k in ("source", "target")
        )
        if not ok:
            raise SourceError(f"{where}: a seq2seq record is {{'source': str, 'target': str}}")
        pairs.append((record["source"], record["target"]))
    return pairs


def split_pairs(cfg: Any, split: str) -> list[Pair]:
    """The pairs of `split`: a task's own disjoint split, or a seeded split of the records."""
    data = cfg.data
    if split not in ("train", "validation"):
        raise ValueError(f"data.format=seq2seq has splits train and validation, not {split!r}")
    if data.corpus.startswith(TASK_PREFIX):
        name = data.corpus.removeprefix(TASK_PREFIX)
        return task_pairs(name, split, data.seed, data.val_fraction, data.cache_dir)
    pairs = read_pairs(data.corpus)
    train_idx, val_idx = split_examples(len(pairs), data.val_fraction, data.seed)
    if split == "validation" and len(val_idx) == 0:
        raise ValueError(f"data.val_fraction={data.val_fraction} holds out no pair")
    return [pairs[i] for i in (train_idx if split == "train" else val_idx)]


def pair_rows(cfg: Any, pairs: Sequence[Pair], tokenizer: Any) -> tuple[list[Row], int]:
    """(rows, pairs skipped as too long) in the layout the run's arch reads."""
    L = cfg.train.seq_len
    ids = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id,
           "sep": tokenizer.encode(SEPARATOR)}  # fmt: skip
    encdec = cfg.model.arch in ENCDEC_ARCHS
    rows, skipped = [], 0
    for source, target in pairs:
        src, tgt = tokenizer.encode(source), tokenizer.encode(target)
        try:
            if encdec:
                row = pair_row(src, tgt, L, L, start_id=ids["bos"], eos_id=ids["eos"],
                               pad_id=ids["pad"])  # fmt: skip
            else:
                row = decoder_row(src, tgt, L, ids=ids)
        except ValueError as err:
            if cfg.data.sft_overlong == "error":
                raise ValueError(
                    f"seq2seq pair {source[:40]!r}: {err}; raise train.seq_len or set "
                    "data.sft_overlong=skip to drop over-long pairs"
                ) from None
            skipped += 1
            continue
        rows.append(row)
    return rows, skipped


def seq2seq_dataset(
    cfg: Any, split: str, tokenizer: Any, process_index: int, process_count: int
) -> tuple[grain.MapDataset, str]:
    """This process's batches of pair rows, laid out like `llm.data.pipeline`'s: train rows
    repeat in a new seeded order every epoch, validation is one pass padded to whole batches."""
    B, L, seed = cfg.train.batch_size, cfg.train.seq_len, cfg.data.seed
    rows, skipped = pair_rows(cfg, split_pairs(cfg, split), tokenizer)
    if not rows:
        raise ValueError(f"no {split} seq2seq pair fits train.seq_len={L} ({skipped} skipped)")
    if cfg.model.arch in ENCDEC_ARCHS:
        pad = empty_pair_row(L, L, tokenizer.pad_id)
    else:
        pad = {k: np.zeros_like(v) for k, v in rows[0].items()}
    if split == "train":
        indices = grain.MapDataset.range(len(rows)).shuffle(seed=seed).repeat(None)
    else:
        indices = grain.MapDataset.range(-(-len(rows) // B) * B)
    ds = indices.map(lambda i: rows[i] if i < len(rows) else pad)
    batches = ds.batch(B // process_count, drop_remainder=True)[process_index::process_count]
    return batches, _fingerprint(rows, skipped)


def _fingerprint(rows: Sequence[Row], skipped: int) -> str:
    h = hashlib.sha256(str(skipped).encode())
    for row in rows:
        for key in sorted(row):
            h.update(row[key].tobytes())
    return h.hexdigest()[:16]
