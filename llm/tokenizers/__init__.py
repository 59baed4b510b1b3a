"""Tokenizers behind one interface (`Tokenizer`): bytes, SentencePiece, Hugging Face files, and
from-scratch byte-level BPE, WordPiece and unigram trainers (see docs/tokenizers.md).
"""

from __future__ import annotations

from pathlib import Path

from llm.tokenizers.base import Tokenizer, encode_batch
from llm.tokenizers.byte import ByteTokenizer
from llm.tokenizers.chat import apply_chat
from llm.tokenizers.specials import DEFAULT_SPECIALS, SpecialTokens

__all__ = [
    "DEFAULT_SPECIALS",
    "ByteTokenizer",
    "SpecialTokens",
    "Tokenizer",
    "apply_chat",
    "encode_batch",
    "load_tokenizer",
]

_SPEC_HELP = (
    "expected 'byte', a SentencePiece .model file, a tokenizer.json file, "
    "or a directory holding tokenizer.json or tokenizer.model"
)


def load_tokenizer(spec: str) -> Tokenizer:
    """Load "byte", path/to/x.model (SentencePiece), path/to/tokenizer.json, or a directory."""
    if spec == "byte":
        return ByteTokenizer()
    path = Path(spec)
    if path.is_dir():
        for name in ("tokenizer.json", "tokenizer.model"):
            if (path / name).is_file():
                return load_tokenizer(str(path / name))
        raise FileNotFoundError(f"tokenizer {spec!r}: directory has no tokenizer.json or .model")
    if path.suffix == ".model":
        from llm.tokenizers.sentencepiece import SentencePieceTokenizer

        return SentencePieceTokenizer(path)
    if path.suffix == ".json":
        from llm.tokenizers.hf import HFTokenizer

        return HFTokenizer(path)
    raise ValueError(f"unknown tokenizer {spec!r}: {_SPEC_HELP}")
