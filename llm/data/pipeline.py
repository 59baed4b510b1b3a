"""`make_batches`: token shards -> packed rows -> shuffle -> per-process batches, resumable.

The grain pipeline, all of it random access (`MapDataset`), so that one integer is the state:

    train:       range(rows).shuffle(seed).repeat()  # new row order every epoch
    or, with data.order=streams: range(B S).repeat() -> stream row  # llm/data/streams.py
    validation:  range(rows rounded up to a global batch)  # one pass; extra rows are padding
    -> map(packed row) [-> random_map(MLM masking | span corruption)] -> batch(B / P) -> [p::P]

Global batch k is rows [k B, (k + 1) B) of that stream; process p of P takes the contiguous
block [k B + p B / P, k B + (p + 1) B / P) and reads only those rows from disk. The blocks of
all processes, in process order, are exactly the single-process global batch, so a checkpoint
taken with P processes resumes exactly with any P' that divides B. The iterator state is
`{"next_batch": k}` plus identity fields (seed, shapes, data fingerprint, and the order when it
is not the default) checked on restore.
"""

from __future__ import annotations

import functools
from typing import Any

import grain
import numpy as np

from llm.config import Config
from llm.data.classification import classification_dataset
from llm.data.objectives import mlm_mask, mlm_mask_id
from llm.data.packing import PackedRows
from llm.data.preference import preference_dataset
from llm.data.seq2seq import seq2seq_dataset, span_corruption_transform
from llm.data.sft import sft_dataset
from llm.data.streams import StreamRows, with_fresh_state
from llm.data.tokenized import OOD_SPLIT, load_shards
from llm.tokenizers import Tokenizer

STATE_VERSION = 1
SPLITS = ("train", "validation", OOD_SPLIT)


class BatchIterator:
    """Iterator of batch dicts with a tiny JSON-serialisable, restorable state."""

    def __init__(self, dataset: grain.MapDataset, identity: dict[str, Any], options):
        self._dataset, self._identity, self._options = dataset, identity, options
        self._iter = iter(dataset.to_iter_dataset(options))

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iter)

    def get_state(self) -> dict[str, Any]:
        return {**self._identity, "next_batch": int(self._iter.get_state()["next_index"])}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues the stream at `state["next_batch"]`; refuses a state of another stream."""
        for key, value in self._identity.items():
            if key == "process_count":
                continue  # supported: global batches do not depend on the process count
            if state.get(key) != value:
                raise ValueError(
                    f"cannot restore data iterator: {key}={state.get(key)!r} in the saved state "
                    f"but {value!r} now; the saved stream came from another config or corpus"
                )
        self._iter.set_state({"next_index": int(state["next_batch"])})


def make_batches(
    cfg: Config,
    split: str,
    tokenizer: Tokenizer,
    process_index: int = 0,
    process_count: int = 1,
) -> BatchIterator:
    """Batches of `split` for this process: dicts of [B / process_count, L] numpy arrays."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    B, L = cfg.train.batch_size, cfg.train.seq_len
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"bad process {process_index=} of {process_count=}")
    if B % process_count:
        raise ValueError(f"train.batch_size={B} is not divisible by {process_count=}")
    if cfg.data.format == "chat":  # SFT conversations: llm/data/sft.py
        dataset, key = sft_dataset(cfg, split, tokenizer, process_index, process_count)
    elif cfg.data.format == "classification":  # {"text", "label"}: llm/data/classification.py
        dataset, key = classification_dataset(cfg, split, tokenizer, process_index, process_count)
    elif cfg.data.format == "preference":  # pairs / KTO [B, 2, L]: llm/data/preference.py
        dataset, key = preference_dataset(cfg, split, tokenizer, process_index, process_count)
    elif cfg.data.format == "seq2seq":  # (source, target) pairs: llm/data/seq2seq.py
        dataset, key = seq2seq_dataset(cfg, split, tokenizer, process_index, process_count)
    else:
        shards, _, key = load_shards(cfg.data, tokenizer, ood=split == OOD_SPLIT)
        if split not in shards:
            raise ValueError(f"split {split!r} not in the token shards (have {sorted(shards)})")
        dataset = batch_dataset(cfg, split, shards[split], tokenizer, process_index, process_count)
    identity = {
        "version": STATE_VERSION,
        "split": split,
        "seed": cfg.data.seed,
        "global_batch_size": B,
        "seq_len": L,
        "objective": cfg.data.objective,
        "data": key,
        "process_count": process_count,
    }
    if cfg.data.order != "shuffled":  # absent by default: older saved states still restore
        identity["order"] = cfg.data.order
    options = grain.ReadOptions(
        num_threads=cfg.data.read_threads, prefetch_buffer_size=cfg.data.prefetch
    )
    return BatchIterator(dataset, identity, options)


def batch_dataset(cfg: Config, split, shard, tokenizer, process_index, process_count):
    """The grain MapDataset of this process's batches (see the module docstring)."""
    B, L, seed = cfg.train.batch_size, cfg.train.seq_len, cfg.data.seed
    if split == "train":
        order = np.random.default_rng(seed).permutation(shard.num_docs)
        rows = PackedRows(shard, L, tokenizer.pad_id, order)
        if len(rows) == 0:
            raise ValueError("the train split has no tokens")
        if cfg.data.order == "streams":
            streams = StreamRows(rows, B)
            ds = grain.MapDataset.range(len(streams)).repeat(None).map(streams.__getitem__)
        else:
            indices = grain.MapDataset.range(len(rows)).shuffle(seed=seed).repeat(None)
            ds = indices.map(rows.__getitem__)
    else:
        rows = PackedRows(shard, L, tokenizer.pad_id, np.arange(shard.num_docs))
        ds = grain.MapDataset.range(-(-len(rows) // B) * B).map(rows.__getitem__)
        if cfg.data.order == "streams":  # the same leaves as training: each row from zero
            ds = ds.map(with_fresh_state)
    if cfg.data.objective == "mlm":
        mask_id = mlm_mask_id(tokenizer)
        transform = functools.partial(
            mlm_mask,
            rate=cfg.data.mlm_rate,
            mask_id=mask_id,
            vocab_size=tokenizer.vocab_size,
            special_ids=(tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id),
            pad_id=tokenizer.pad_id,
        )
        ds = ds.random_map(transform, seed=seed)
    elif cfg.data.objective == "span_corruption":  # T5 pairs: llm/data/seq2seq.py
        ds = ds.random_map(span_corruption_transform(cfg, tokenizer), seed=seed)
    return ds.batch(B // process_count, drop_remainder=True)[process_index::process_count]
