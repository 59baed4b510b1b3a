"""Learning BPE merges from word counts (Sennrich et al. 2016, "Neural Machine Translation of
Rare Words with Subword Units"): start from single characters, repeatedly fuse the most frequent
adjacent pair into a new symbol until the vocabulary is full.

The loop follows Hugging Face `tokenizers`' `BpeTrainer` step for step so the two give the same
merges and vocabulary (tested in tests/tokenizers/test_bpe.py):

- ids: special tokens first, then the alphabet sorted by code point, then (WordPiece only) the
  continuation symbols "##c" in the order words are read, then one id per new token;
- the most frequent pair wins; ties go to the pair with the smaller (left id, right id);
- counts are updated incrementally: a heap holds (count, pair, words-to-visit) entries, a popped
  entry whose count is stale is pushed back with the current count, and a merge only visits the
  words its entry lists. That last rule means a pair whose count grew after it was queued (when
  two merges produce the same token string) may be merged in two steps, a duplicate merge that
  adds no token; we keep that rare behaviour, because "the same result as the reference" is the
  point.

Plain-Python cost: one merge touches only the words that contain the pair, so training on the
5 MB default corpus takes seconds to minutes rather than hours (see docs/benchmarks.md).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_U64 = 1 << 64  # HF casts an i32 count to u64; a negative count wraps (kept for fidelity)


@dataclass(frozen=True)
class LearnedBPE:
    """What training produces: id -> token, and the merges as (left, right) token strings."""

    vocab: list[str]
    merges: list[tuple[str, str]]
    n_base: int  # specials + alphabet (+ "##c" symbols): the ids that precede the first merge


def _merge_word(symbols: list[int], a: int, b: int, new: int) -> list[tuple[tuple[int, int], int]]:
    """Replace every non-overlapping (a, b) left to right; return pair-count changes."""
    changes = []
    i = 0
    while i < len(symbols):
        if symbols[i] == a and i + 1 < len(symbols) and symbols[i + 1] == b:
            if i > 0:
                changes.append(((symbols[i - 1], a), -1))
                changes.append(((symbols[i - 1], new), 1))
            symbols[i : i + 2] = [new]
            if i < len(symbols) - 1:
                changes.append(((b, symbols[i + 1]), -1))
                changes.append(((new, symbols[i + 1]), 1))
        i += 1
    return changes


def _initial_vocab(
    word_counts: Mapping[str, int], special_tokens: Iterable[str], initial_alphabet: Iterable[str]
) -> tuple[list[str], dict[str, int]]:
    id_to_tok: list[str] = []
    tok_to_id: dict[str, int] = {}
    chars = {c for word in word_counts for c in word} | set(initial_alphabet)
    for tok in [*special_tokens, *sorted(chars)]:
        if tok not in tok_to_id:
            tok_to_id[tok] = len(id_to_tok)
            id_to_tok.append(tok)
    return id_to_tok, tok_to_id


def _spell_words(
    words: list[str], id_to_tok: list[str], tok_to_id: dict[str, int], prefix: str | None
) -> list[list[int]]:
    """Each word as symbol ids; with a prefix, non-initial characters become "##c" symbols."""
    spelled = []
    for word in words:
        ids = []
        for i, c in enumerate(word):
            s = prefix + c if (prefix and i > 0) else c
            if s not in tok_to_id:
                tok_to_id[s] = len(id_to_tok)
                id_to_tok.append(s)
            ids.append(tok_to_id[s])
        spelled.append(ids)
    return spelled


def learn_bpe(
    word_counts: Mapping[str, int],
    vocab_size: int,
    *,
    special_tokens: Iterable[str] = (),
    initial_alphabet: Iterable[str] = (),
    min_frequency: int = 0,
    continuing_prefix: str | None = None,
) -> LearnedBPE:
    """Learn merges until `vocab_size` tokens (specials included) or no pair is frequent enough.

    `word_counts` maps a pre-tokenized word (a string of base symbols) to its corpus count; its
    iteration order only matters for the ids of "##c" symbols (WordPiece).
    """
    words = list(word_counts)
    counts = [word_counts[w] for w in words]
    id_to_tok, tok_to_id = _initial_vocab(word_counts, special_tokens, initial_alphabet)
    spelled = _spell_words(words, id_to_tok, tok_to_id, continuing_prefix)
    n_base = len(id_to_tok)

    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for w, symbols in enumerate(spelled):
        for pair in itertools.pairwise(symbols):
            pair_counts[pair] = pair_counts.get(pair, 0) + counts[w]
            where.setdefault(pair, set()).add(w)
    heap: list = []
    order = 0  # FIFO among equal (count, pair) entries
    for pair, pos in where.items():
        if pair_counts[pair] > 0:
            heap.append((-pair_counts[pair], pair, order, pos))
            order += 1
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    while len(tok_to_id) < vocab_size and heap:
        neg_count, pair, _, pos = heapq.heappop(heap)
        current = pair_counts[pair] % _U64
        if -neg_count != current:
            heapq.heappush(heap, (-current, pair, order, pos))
            order += 1
            continue
        if current < 1 or min_frequency > current:
            break
        left, right = id_to_tok[pair[0]], id_to_tok[pair[1]]
        if continuing_prefix and right.startswith(continuing_prefix):
            right = right[len(continuing_prefix) :]
        new_tok = left + right
        if new_tok not in tok_to_id:
            tok_to_id[new_tok] = len(id_to_tok)
            id_to_tok.append(new_tok)
        new_id = tok_to_id[new_tok]
        merges.append(pair)

        grown: dict[tuple[int, int], set[int]] = {}
        for w in pos:
            for changed, delta in _merge_word(spelled[w], pair[0], pair[1], new_id):
                pair_counts[changed] = pair_counts.get(changed, 0) + delta * counts[w]
                if delta > 0:
                    grown.setdefault(changed, set()).add(w)
        for changed, changed_pos in grown.items():
            if pair_counts[changed] > 0:
                heapq.heappush(heap, (-pair_counts[changed], changed, order, changed_pos))
                order += 1
    return LearnedBPE(id_to_tok, [(id_to_tok[a], id_to_tok[b]) for a, b in merges], n_base)
