"""Vectorised n-gram counting over token-id documents, and n-gram lookup in held-out text.

Design choices:
- **Hierarchical integer keys, no tuples, no dicts.** The k-gram ending at position p is the
  (k-1)-gram ending at p-1 followed by token p, so its key is `id_{k-1}(p-1) * V + token(p)`,
  where `id_{k-1}` is the rank of that (k-1)-gram among the sorted distinct (k-1)-grams.
  Ranks are below the number of tokens, so keys fit an int64 for any vocabulary (a plain
  base-V encoding of a 5-gram overflows an int64 at V > 6,000), and one `np.unique` per order
  counts every k-gram of the corpus (KN-5 over the 5 MB Shakespeare bytes: a few seconds).
- **Documents are never crossed**: a k-gram is counted only where its k tokens lie in one
  document (`pos_in_doc >= k - 1`); held-out positions near a document start get the shorter
  history the document offers.
- Per distinct k-gram the table keeps its raw count, the id of its context (first k-1 tokens,
  in the order k-1 table), of its suffix (last k-1 tokens), and whether it starts at a
  document start with the BOS id (Kneser-Ney uses raw counts there, as KenLM does: Heafield
  et al. 2013, "Scalable modified Kneser-Ney language model estimation", sec. 3.1).
  The continuation count N1+(. g) of a k-gram g (Kneser & Ney 1995) is the number of distinct
  (k+1)-grams whose suffix is g: one `bincount` over the next order's suffix ids.

The vocabulary is the tokenizer's (ids 0 .. V-1), so nothing is out of vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Documents:
    """Token-id documents as one stream: tokens [T] and document boundaries starts [N + 1]."""

    tokens: np.ndarray  # [T] int64 token ids, documents concatenated
    starts: np.ndarray  # [N + 1] int64 offsets of each document into `tokens`

    @classmethod
    def from_list(cls, docs: Sequence[Sequence[int]]) -> Documents:
        lengths = [len(d) for d in docs]
        tokens = np.concatenate([np.asarray(d, np.int64) for d in docs] or [np.zeros(0, np.int64)])
        return cls(
            tokens.astype(np.int64), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        )

    @classmethod
    def from_shard(cls, shard) -> Documents:
        """A `llm.data.shards.TokenShard` (memory-mapped) read into memory as int64."""
        return cls(np.asarray(shard.tokens, np.int64), np.asarray(shard.offsets, np.int64))

    def __len__(self) -> int:
        return len(self.tokens)

    def position_in_doc(self) -> np.ndarray:
        """[T] index of every token inside its own document (0 at each document start)."""
        lengths = np.diff(self.starts)
        return np.arange(len(self.tokens)) - np.repeat(self.starts[:-1], lengths)


@dataclass(frozen=True)
class OrderTable:
    """The distinct k-grams of one order k, sorted by key = context id * V + last token."""

    keys: np.ndarray  # [G] int64 sorted keys
    count: np.ndarray  # [G] int64 raw counts c(g)
    context: np.ndarray  # [G] id of the first k-1 tokens in the order k-1 table (0 for k = 1)
    word: np.ndarray  # [G] the last token
    suffix: np.ndarray  # [G] id of the last k-1 tokens in the order k-1 table (0 for k = 1)
    bos_initial: np.ndarray  # [G] bool: the k-gram starts with BOS (so has no left neighbour)
    n_contexts: int  # size of the order k-1 table (1 for k = 1: the empty context)

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class NgramCounts:
    """Count tables of orders 1..n over a set of documents, vocabulary size V."""

    tables: tuple[OrderTable, ...]  # tables[k - 1] holds the k-grams
    vocab_size: int

    @property
    def order(self) -> int:
        return len(self.tables)

    def continuation(self, k: int) -> np.ndarray:
        """[G_k] N1+(. g): distinct left neighbours of each k-gram (needs order k + 1)."""
        if k >= self.order:
            raise ValueError(f"continuation counts of order {k} need order {k + 1} counts")
        return np.bincount(self.tables[k].suffix, minlength=len(self.tables[k - 1]))

    def num_ngrams(self) -> int:
        return int(sum(len(t) for t in self.tables))


def _check(docs: Documents, vocab_size: int) -> None:
    if len(docs.tokens) and (docs.tokens.min() < 0 or docs.tokens.max() >= vocab_size):
        raise ValueError(
            f"token ids span [{docs.tokens.min()}, {docs.tokens.max()}] but vocab_size={vocab_size}"
        )


def _distinct(key: np.ndarray) -> tuple[np.ndarray, ...]:
    """(sorted distinct keys, rank of each key, count of each, one index of each): like
    `np.unique(return_inverse, return_counts, return_index)` with a plain sort and a binary
    search instead of its stable argsort (several times faster on millions of keys)."""
    sorted_keys = np.sort(key)
    new = np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]) if len(key) else []
    keys = sorted_keys[np.asarray(new, bool)]
    inv = np.searchsorted(keys, key)
    at = np.zeros(len(keys), np.int64)
    at[inv] = np.arange(len(key))
    return keys, inv, np.bincount(inv, minlength=len(keys)), at


def count_ngrams(
    docs: Documents, order: int, vocab_size: int, bos_id: int | None = None
) -> NgramCounts:
    """Counts every k-gram (k = 1..order) inside each document; `bos_id` marks the k-grams
    that start with it (None: none do, as in nltk's convention)."""
    if order < 1:
        raise ValueError(f"n-gram order must be >= 1, got {order}")
    _check(docs, vocab_size)
    tok, pos = docs.tokens, docs.position_in_doc()
    ids_prev = np.zeros(len(tok), np.int64)  # order 0: the empty n-gram, id 0 everywhere
    tables = []
    for k in range(1, order + 1):
        sel = np.flatnonzero(pos >= k - 1)
        ctx = ids_prev[sel - 1] if k > 1 else np.zeros(len(sel), np.int64)
        n_ctx = len(tables[-1]) if tables else 1
        if n_ctx * vocab_size >= 2**62:
            raise ValueError(f"order {k}: {n_ctx} contexts x vocab {vocab_size} overflow int64")
        key = ctx * vocab_size + tok[sel]
        keys, inv, cnt, at = _distinct(key)
        ids = np.full(len(tok), -1, np.int64)
        ids[sel] = inv
        at = sel[at]  # one occurrence (its last position) of each distinct k-gram
        tables.append(
            OrderTable(
                keys=keys,
                count=cnt.astype(np.int64),
                context=keys // vocab_size,
                word=keys % vocab_size,
                suffix=ids_prev[at] if k > 1 else np.zeros(len(keys), np.int64),
                bos_initial=(tok[at - (k - 1)] == bos_id)
                if bos_id is not None
                else np.zeros(len(keys), bool),
                n_contexts=n_ctx,
            )
        )
        ids_prev = ids
    return NgramCounts(tuple(tables), vocab_size)


@dataclass(frozen=True)
class Lookup:
    """Where each held-out position's n-grams sit in the count tables (-1: not seen).

    For order k and position p: ctx[k - 1][p] is the id of tokens p-k+1 .. p-1 in the order
    k-1 table (0 for k = 1), gram[k - 1][p] the id of tokens p-k+1 .. p in the order k table.
    Both are -1 where the k-gram would leave p's document or was never counted."""

    ctx: tuple[np.ndarray, ...]
    gram: tuple[np.ndarray, ...]
    pos: np.ndarray  # [T] index of p inside its document

    def fits(self, k: int) -> np.ndarray:
        """[T] the k-1 tokens before p lie inside p's document (seen in training or not)."""
        return self.pos >= k - 1


def lookup(counts: NgramCounts, docs: Documents) -> Lookup:
    """Finds every held-out n-gram of orders 1..n in `counts`, vectorised per order."""
    _check(docs, counts.vocab_size)
    V, tok, pos = counts.vocab_size, docs.tokens, docs.position_in_doc()
    ids_prev = np.zeros(len(tok), np.int64)
    ctxs, grams = [], []
    for k, table in enumerate(counts.tables, start=1):
        valid = pos >= k - 1
        ctx = np.where(valid, np.roll(ids_prev, 1), -1) if k > 1 else np.zeros(len(tok), np.int64)
        key = np.maximum(ctx, 0) * V + tok
        j = np.minimum(np.searchsorted(table.keys, key), max(len(table) - 1, 0))
        found = (ctx >= 0) & (len(table) > 0) & (table.keys[j] == key if len(table) else False)
        ctxs.append(ctx)
        grams.append(np.where(found, j, -1))
        ids_prev = grams[-1]
    return Lookup(tuple(ctxs), tuple(grams), pos)
