"""Tokenizers behind one interface (`Tokenizer`): byte-level now; trained ones alongside."""

from llm.tokenizers.base import Tokenizer
from llm.tokenizers.byte import ByteTokenizer

__all__ = ["ByteTokenizer", "Tokenizer"]
