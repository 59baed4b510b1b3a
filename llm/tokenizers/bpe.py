"""Byte-level BPE from scratch (GPT-2 style): train, encode, decode, save as `tokenizer.json`.

Encoding a word: spell it as byte symbols, then repeatedly apply the learned merge with the
lowest rank (the earliest learned) among adjacent pairs, everywhere it occurs, until no adjacent
pair has a merge. Because every byte is in the base alphabet, any string encodes and decodes
back exactly.

Files are written in Hugging Face's `tokenizer.json` layout (ByteLevel pre-tokenizer and
decoder, BPE model), so `load_tokenizer` and the `tokenizers` library read them too.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from llm.tokenizers import bytelevel
from llm.tokenizers.bpe_train import learn_bpe
from llm.tokenizers.specials import DEFAULT_SPECIALS, VocabLookup, added_token, find_specials

_CACHE_LIMIT = 200_000  # cached word encodings before the cache is cleared


class BPETokenizer(VocabLookup):
    """Byte-level BPE given its vocabulary (id -> token) and ordered merges."""

    def __init__(
        self,
        vocab: Sequence[str],
        merges: Sequence[tuple[str, str]],
        special_tokens: Sequence[str],
        where: str = "<memory>",
    ):
        self.vocab = list(vocab)
        self.tok_to_id = {t: i for i, t in enumerate(self.vocab)}
        if len(self.tok_to_id) != len(self.vocab):
            raise ValueError(f"{where}: vocabulary has duplicate tokens")
        missing = [c for c in bytelevel.byte_alphabet() if c not in self.tok_to_id]
        if missing:
            raise ValueError(f"{where}: byte symbols missing from vocab: {missing[:5]}...")
        self.ranks = {pair: r for r, pair in enumerate(merges)}  # a repeated pair keeps its last
        self.special_tokens = list(special_tokens)
        self._special_ids = {self.tok_to_id[s] for s in self.special_tokens}
        self._pad, self._bos, self._eos = find_specials(self.tok_to_id, where)
        self._cache: dict[str, list[int]] = {}

    def _merge(self, word: str) -> list[str]:
        symbols = list(word)
        while len(symbols) > 1:
            pairs = list(itertools.pairwise(symbols))
            best = min(pairs, key=lambda p: self.ranks.get(p, len(self.ranks)))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in bytelevel.pretokenize(text):
            if word not in self._cache:
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                self._cache[word] = [self.tok_to_id[t] for t in self._merge(word)]
            ids.extend(self._cache[word])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Special ids are dropped; invalid UTF-8 (possible after sampling) becomes U+FFFD."""
        symbols = "".join(self.vocab[i] for i in ids if i not in self._special_ids)
        return bytelevel.to_bytes(symbols).decode("utf-8", errors="replace")

    def to_json(self) -> dict:
        """Hugging Face `tokenizer.json` layout (ByteLevel + BPE)."""
        merges = sorted(self.ranks, key=self.ranks.__getitem__)
        byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [added_token(self.tok_to_id[s], s) for s in self.special_tokens],
            "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", **byte_level},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", **byte_level},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": self.tok_to_id,
                "merges": [list(m) for m in merges],
            },
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a ByteLevel BPE `tokenizer.json` (ours or Hugging Face's)."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        model = data.get("model", {})
        if model.get("type") != "BPE" or (data.get("pre_tokenizer") or {}).get("type") != (
            "ByteLevel"
        ):
            raise ValueError(f"{path}: not a byte-level BPE tokenizer.json")
        vocab = sorted(model["vocab"], key=model["vocab"].__getitem__)
        merges = [
            tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]
        ]
        specials = [t["content"] for t in data.get("added_tokens", []) if t.get("special")]
        return cls(vocab, merges, specials, where=str(path))


def count_words(texts: Iterable[str]) -> Counter[str]:
    """Pre-tokenized word -> count over the corpus (the only thing the trainer looks at)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(bytelevel.pretokenize(text))
    return counts


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    special_tokens: Sequence[str] = tuple(DEFAULT_SPECIALS.as_list()),
    min_frequency: int = 0,
) -> BPETokenizer:
    """Train byte-level BPE; `vocab_size` counts the 256 bytes and the special tokens."""
    floor = 256 + len(special_tokens)
    if vocab_size < floor:
        raise ValueError(f"{vocab_size=} must be at least 256 bytes + specials = {floor}")
    learned = learn_bpe(
        count_words(texts),
        vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=bytelevel.byte_alphabet(),
        min_frequency=min_frequency,
    )
    return BPETokenizer(learned.vocab, learned.merges, special_tokens)
