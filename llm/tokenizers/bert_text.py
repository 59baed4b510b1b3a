"""BERT's text preparation before WordPiece: normalize, then split into words and punctuation.

Normalization (Devlin et al. 2019, as in Hugging Face's `BertNormalizer`): drop NUL, U+FFFD and
control/format characters, turn whitespace into spaces, put spaces around CJK ideographs (each
becomes its own word), strip accents (NFD, then drop non-spacing marks) and lowercase. Uncased
BERT is why WordPiece cannot round-trip text: case and accents are gone before the model sees it.
"""

from __future__ import annotations

import unicodedata

# CJK Unified Ideograph blocks BERT isolates (Hangul and kana are not among them).
_CJK = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_control(c: str) -> bool:
    return c not in "\t\n\r" and unicodedata.category(c)[0] == "C"


def _is_cjk(c: str) -> bool:
    cp = ord(c)
    return any(lo <= cp <= hi for lo, hi in _CJK)


def _is_punctuation(c: str) -> bool:
    return (c.isascii() and not c.isalnum() and c.isprintable() and c != " ") or (
        unicodedata.category(c).startswith("P")
    )


def normalize(text: str, lowercase: bool = True) -> str:
    """Clean, isolate CJK, and (for uncased models) strip accents and lowercase."""
    out = []
    for c in text:
        if c in "\x00\ufffd" or _is_control(c):
            continue
        if c.isspace():
            out.append(" ")
        elif _is_cjk(c):
            out.append(f" {c} ")
        else:
            out.append(c)
    text = "".join(out)
    if lowercase:
        decomposed = unicodedata.normalize("NFD", text)
        text = "".join(c for c in decomposed if unicodedata.category(c) != "Mn").lower()
    return text


def pretokenize(text: str) -> list[str]:
    """Split on whitespace, and make every punctuation character its own word."""
    words = []
    for chunk in text.split():
        start = 0
        for i, c in enumerate(chunk):
            if _is_punctuation(c):
                if start < i:
                    words.append(chunk[start:i])
                words.append(c)
                start = i + 1
        if start < len(chunk):
            words.append(chunk[start:])
    return words
