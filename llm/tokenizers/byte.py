"""Bytes as tokens: ids 0-255 are the UTF-8 bytes, then PAD, BOS, EOS.

No training, no unknown tokens, exact round trip for any Unicode text: the fallback that
always works and the one the smallest CPU runs use.
"""

from __future__ import annotations

from collections.abc import Sequence


class ByteTokenizer:
    """UTF-8 byte-level tokenizer with three special ids after the 256 bytes."""

    PAD, BOS, EOS = 256, 257, 258

    @property
    def vocab_size(self) -> int:
        return 259

    @property
    def bos_id(self) -> int:
        return self.BOS

    @property
    def eos_id(self) -> int:
        return self.EOS

    @property
    def pad_id(self) -> int:
        return self.PAD

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """Drops special ids; invalid byte sequences (from sampling) decode with U+FFFD."""
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
