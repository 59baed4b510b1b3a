"""Hugging Face `tokenizer.json` files through the `tokenizers` library.

Any tokenizer saved by `tokenizers` or `transformers` (BPE, WordPiece, Unigram) loads here.
Special tokens written in the input text are encoded as plain text (`encode_special_tokens`),
the same policy as our own tokenizers: only code, never user text, inserts control tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from llm.tokenizers.specials import find_specials


class HFTokenizer:
    """A `tokenizers.Tokenizer` behind the `Tokenizer` protocol."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"tokenizer file {self.path} does not exist")
        try:
            self._tok = Tokenizer.from_file(str(self.path))
        except Exception as e:  # the Rust error says what is wrong, not which file
            raise ValueError(f"{self.path}: not a valid tokenizer.json ({e})") from e
        self._tok.encode_special_tokens = True
        # a file's padding / truncation settings (all-MiniLM-L6-v2: pad and cut to 128) would
        # pad or silently cut every encode; callers pad and truncate themselves
        self._tok.no_padding()
        self._tok.no_truncation()
        vocab = self._tok.get_vocab(with_added_tokens=True)
        where = str(self.path)
        self._pad, self._bos, self._eos = find_specials(vocab, where)

    vocab_size = property(lambda self: self._tok.get_vocab_size(with_added_tokens=True))
    bos_id = property(lambda self: self._bos)
    eos_id = property(lambda self: self._eos)
    pad_id = property(lambda self: self._pad)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str:
        return self._tok.id_to_token(i)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Parallel in Rust; the fast path for tokenizing a corpus."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)
