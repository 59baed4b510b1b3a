"""Pre-tokenized shards on disk: a corpus is tokenized once, then memory-mapped.

A shard is a folder with
    tokens.bin    every document's token ids back to back (uint16 when the vocabulary fits,
                  else uint32), read with `np.memmap`, so a large corpus costs no RAM
    offsets.npy   int64 [documents + 1]: document i is tokens[offsets[i]:offsets[i + 1]]
    meta.json     format tag, dtype, counts and vocabulary size
NumPy memmaps rather than ArrayRecord: the packer needs random access to token ranges, not to
records, and a flat array gives it with one slice and no extra dependency.

Tokenization runs through a grain `MapDataset` with `read_threads` worker threads, in order.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import grain
import numpy as np

FORMAT = "llm-tokens-v1"


class ShardError(ValueError):
    """A token shard is missing, incomplete or inconsistent."""


@dataclasses.dataclass(frozen=True)
class TokenShard:
    tokens: np.ndarray  # [T] token ids of all documents, concatenated (memmap when read)
    offsets: np.ndarray  # [N + 1] int64 document boundaries into `tokens`
    vocab_size: int  # vocabulary size of the tokenizer that wrote the shard

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def document(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]])


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def write_shard(
    out_dir: str | Path,
    texts: Sequence[str],
    encode: Callable[[str], Iterable[Sequence[int]]],
    vocab_size: int,
    threads: int = 2,
) -> TokenShard:
    """Tokenizes `texts` in order into a shard folder.

    `encode(text)` gives a document's ids (BOS/EOS included) as consecutive pieces: a list of
    one piece, computed in a worker thread, or a lazy iterator of pieces for a huge document,
    each written as it comes so that the whole document's ids are never in memory at once."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    ds = grain.MapDataset.source(list(texts)).map(encode)
    options = grain.ReadOptions(num_threads=max(threads, 1), prefetch_buffer_size=64)
    lengths = []
    with (out / "tokens.bin").open("wb") as f:
        for i, pieces in enumerate(ds.to_iter_dataset(options)):
            n = 0
            for piece in pieces:
                ids = np.asarray(piece, dtype=np.int64)
                if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
                    bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
                    raise ShardError(
                        f"document {i}: token id {bad} outside vocabulary [0, {vocab_size})"
                    )
                f.write(ids.astype(dtype).tobytes())
                n += ids.size
            lengths.append(n)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    np.save(out / "offsets.npy", offsets)
    meta = {
        "format": FORMAT,
        "dtype": dtype.name,
        "documents": len(lengths),
        "tokens": int(offsets[-1]),
        "vocab_size": vocab_size,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return read_shard(out)


def read_shard(path: str | Path) -> TokenShard:
    """Memory-maps a shard folder written by `write_shard`, checking it is complete."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.exists():
        raise ShardError(
            f"{path}: not a token shard (no meta.json); write one with llm data tokenize"
        )
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise ShardError(f"{meta_file}: format {meta.get('format')!r}, expected {FORMAT!r}")
    offsets = np.load(path / "offsets.npy")
    dtype = np.dtype(meta["dtype"])
    size = (path / "tokens.bin").stat().st_size
    if size != meta["tokens"] * dtype.itemsize or len(offsets) != meta["documents"] + 1:
        raise ShardError(f"{path}: tokens.bin or offsets.npy do not match meta.json (truncated?)")
    if meta["tokens"] == 0:
        return TokenShard(np.zeros(0, dtype), offsets, meta["vocab_size"])
    tokens = np.memmap(path / "tokens.bin", dtype=dtype, mode="r")
    return TokenShard(tokens, offsets, meta["vocab_size"])
