"""WordPiece (BERT) from scratch: train, encode greedily, decode, save as `tokenizer.json`.

Encoding a word (Wu et al. 2016; Devlin et al. 2019): take the longest vocabulary entry that
starts the word, then the longest "##"-prefixed entry that continues it, and so on; if some
position has no match the whole word becomes [UNK]. Words longer than 100 characters are [UNK].

Training: Google's original WordPiece picks merges by likelihood gain and was never released.
Hugging Face's `WordPieceTrainer` (the de facto reference) runs BPE on words spelled "w ##o ##r
##d" and keeps the resulting vocabulary; we do the same with `learn_bpe`, so the vocabularies
match (tests/tokenizers/test_wordpiece.py states the one condition: equal ids for the "##c"
symbols, which Hugging Face assigns in hash-map order).

Not a round trip: normalization lowercases and strips accents, words are split off punctuation,
whitespace is lost, and unknown words become [UNK].
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from llm.tokenizers import bert_text
from llm.tokenizers.bpe_train import LearnedBPE, learn_bpe
from llm.tokenizers.specials import VocabLookup, added_token, find_specials

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PREFIX = "##"
MAX_WORD_CHARS = 100  # longer words are [UNK], as in BERT


class WordPieceTokenizer(VocabLookup):
    """Greedy longest-match-first WordPiece over BERT-normalized, BERT-split text."""

    def __init__(
        self,
        vocab: Sequence[str],
        special_tokens: Sequence[str] = BERT_SPECIALS,
        unk_token: str = "[UNK]",
        lowercase: bool = True,
        where: str = "<memory>",
    ):
        self.vocab = list(vocab)
        self.tok_to_id = {t: i for i, t in enumerate(self.vocab)}
        if unk_token not in self.tok_to_id:
            raise ValueError(f"{where}: unknown token {unk_token!r} is not in the vocabulary")
        self.unk_token, self.lowercase = unk_token, lowercase
        self.special_tokens = [s for s in special_tokens if s in self.tok_to_id]
        self._special_ids = {self.tok_to_id[s] for s in self.special_tokens}
        self._pad, self._bos, self._eos = find_specials(self.tok_to_id, where)
        self._cache: dict[str, list[str]] = {}

    def encode_word(self, word: str) -> list[str]:
        if len(word) > MAX_WORD_CHARS:
            return [self.unk_token]
        pieces, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else PREFIX + word[start:end]
                if piece in self.tok_to_id:
                    pieces.append(piece)
                    start = end
                    break
            else:
                return [self.unk_token]
        return pieces

    def tokenize(self, text: str) -> list[str]:
        pieces = []
        for word in bert_text.pretokenize(bert_text.normalize(text, self.lowercase)):
            if word not in self._cache:
                if len(self._cache) >= 200_000:
                    self._cache.clear()
                self._cache[word] = self.encode_word(word)
            pieces += self._cache[word]
        return pieces

    def encode(self, text: str) -> list[int]:
        return [self.tok_to_id[p] for p in self.tokenize(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """Join pieces: "##x" glues to the previous piece, others get a space (as HF does)."""
        out = []
        for token in (self.vocab[i] for i in ids if i not in self._special_ids):
            if out:
                token = token[len(PREFIX) :] if token.startswith(PREFIX) else " " + token
            out.append(_cleanup(token))
        return "".join(out)

    def to_json(self) -> dict:
        """Hugging Face `tokenizer.json` layout (BertNormalizer, BertPreTokenizer, WordPiece)."""
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [added_token(self.tok_to_id[s], s) for s in self.special_tokens],
            "normalizer": {
                "type": "BertNormalizer",
                "clean_text": True,
                "handle_chinese_chars": True,
                "strip_accents": None,
                "lowercase": self.lowercase,
            },
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": None,
            "decoder": {"type": "WordPiece", "prefix": PREFIX, "cleanup": True},
            "model": {
                "type": "WordPiece",
                "unk_token": self.unk_token,
                "continuing_subword_prefix": PREFIX,
                "max_input_chars_per_word": MAX_WORD_CHARS,
                "vocab": self.tok_to_id,
            },
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> WordPieceTokenizer:
        """Read a WordPiece `tokenizer.json`, or BERT's `vocab.txt` (one token per line)."""
        path = Path(path)
        if path.suffix == ".txt":
            vocab = path.read_text(encoding="utf-8").removesuffix("\n").split("\n")
            return cls(vocab, BERT_SPECIALS, where=str(path))
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data.get("model", {})
        if model.get("type") != "WordPiece":
            raise ValueError(f"{path}: model type is {model.get('type')!r}, not 'WordPiece'")
        vocab = sorted(model["vocab"], key=model["vocab"].__getitem__)
        specials = [t["content"] for t in data.get("added_tokens", []) if t.get("special")]
        lowercase = (data.get("normalizer") or {}).get("lowercase", True)
        return cls(vocab, specials, model.get("unk_token", "[UNK]"), lowercase, where=str(path))


_CLEANUPS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" do not", " don't"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def _cleanup(token: str) -> str:
    for dirty, clean in _CLEANUPS:
        token = token.replace(dirty, clean)
    return token


def count_words(texts: Iterable[str], lowercase: bool = True) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(bert_text.pretokenize(bert_text.normalize(text, lowercase)))
    return counts


def learn_wordpiece(
    texts: Iterable[str],
    vocab_size: int,
    *,
    special_tokens: Sequence[str] = BERT_SPECIALS,
    min_frequency: int = 0,
    lowercase: bool = True,
) -> LearnedBPE:
    """The BPE-with-"##" run behind WordPiece training (exposed for the parity test)."""
    return learn_bpe(
        count_words(texts, lowercase),
        vocab_size,
        special_tokens=special_tokens,
        min_frequency=min_frequency,
        continuing_prefix=PREFIX,
    )


def train_wordpiece(
    texts: Iterable[str],
    vocab_size: int,
    *,
    special_tokens: Sequence[str] = BERT_SPECIALS,
    min_frequency: int = 0,
    lowercase: bool = True,
) -> WordPieceTokenizer:
    """Train a WordPiece vocabulary of `vocab_size` tokens (specials included)."""
    if "[UNK]" not in special_tokens:
        raise ValueError(f"special_tokens {list(special_tokens)} must include '[UNK]'")
    learned = learn_wordpiece(
        texts,
        vocab_size,
        special_tokens=special_tokens,
        min_frequency=min_frequency,
        lowercase=lowercase,
    )
    return WordPieceTokenizer(learned.vocab, special_tokens, lowercase=lowercase)
