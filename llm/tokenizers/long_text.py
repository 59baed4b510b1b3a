"""Encoding a very long text piece by piece, with exactly the ids of encoding it whole.

A corpus may hold a document of one 200 MB line. Encoding it in one call costs many times its
size: a Python list of ids (8 bytes a token before any array), the pre-tokenizer's list of
pieces, a Rust `Encoding` with offsets. `encode_pieces` cuts the text every `chunk_chars`
characters at a safe boundary and encodes one piece at a time, so memory is bounded by a
piece whatever the document's length.

A boundary is safe when encoding the two sides apart gives the ids of encoding them together.
For the byte tokenizer every character boundary is. For the others we try whitespace near the
target, in two forms: cut before the whitespace (GPT-2's pre-tokenizer keeps a leading space
with the next word), or, for a single space, drop it (SentencePiece's dummy prefix puts that
"▁" back at the start of the next piece). Each candidate is checked on the `WINDOW` characters
either side of the cut, which decides it for tokenizers whose choices near a point depend only
on nearby text: regex pre-tokenizers, whitespace-split SentencePiece, WordPiece. If no
candidate passes, the rest is encoded whole: still correct, just not bounded. The tests
compare every tokenizer we train against the whole-text encoding (tests/tokenizers).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from llm.tokenizers.base import Tokenizer
from llm.tokenizers.byte import ByteTokenizer

CHUNK_CHARS = 1 << 20  # characters per piece (a few MB of ids at most)
WINDOW = 256  # characters either side of a cut that are encoded to check it
MAX_TRIES = 16  # candidate cuts checked per piece before encoding the rest whole
_SPACE_RE = re.compile(r"\s")


def encode_pieces(tok: Tokenizer, text: str, chunk_chars: int = CHUNK_CHARS) -> Iterator[list[int]]:
    """The ids of `tok.encode(text)`, in consecutive pieces of about `chunk_chars` characters."""
    start = 0
    while len(text) - start > chunk_chars:
        cut = _find_cut(tok, text, start, start + chunk_chars)
        if cut is None:
            break
        end, start_next = cut
        yield tok.encode(text[start:end])
        start = start_next
    yield tok.encode(text[start:])


def _find_cut(tok: Tokenizer, text: str, start: int, target: int) -> tuple[int, int] | None:
    """(end of this piece, start of the next) at a checked boundary near `target`, or None."""
    if isinstance(tok, ByteTokenizer):  # ids are the UTF-8 bytes: any code point boundary
        return target, target
    low = start + (target - start) // 2
    for tries, p in enumerate(_candidates(text, low, target)):
        if tries == MAX_TRIES:
            return None
        forms = [(p, p), (p, p + 1)] if text[p] == " " else [(p, p)]
        for end, start_next in forms:
            if _splits_cleanly(tok, text, end, start_next):
                return end, start_next
    return None


def _candidates(text: str, low: int, target: int) -> Iterator[int]:
    """Whitespace positions: backwards from `target` down to `low`, then forwards."""
    p = target
    while True:
        p = max(text.rfind(c, low, p) for c in " \n\t")
        if p <= low:
            break
        yield p
    for match in _SPACE_RE.finditer(text, target):
        yield match.start()


def _splits_cleanly(tok: Tokenizer, text: str, end: int, start_next: int) -> bool:
    a, b = max(end - WINDOW, 0), min(start_next + WINDOW, len(text))
    if a == end or b == start_next:  # nothing on one side to check against
        return False
    return tok.encode(text[a:b]) == tok.encode(text[a:end]) + tok.encode(text[start_next:b])
