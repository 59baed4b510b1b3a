"""GPT-2's byte-level pre-tokenization: text -> regex pieces -> printable byte strings.

Why bytes: a vocabulary whose base alphabet is the 256 byte values can spell every string, so a
byte-level BPE never needs an unknown token and decodes back to the exact input (Radford et al.
2019, "Language Models are Unsupervised Multitask Learners", section 2.2).

Why the odd characters: each byte is shown as one printable Unicode character (the space byte
becomes "Ġ", newline "Ċ") so merges and vocabularies stay human-readable strings. The table is
the one GPT-2 and Hugging Face's `ByteLevel` use, so files are interchangeable.

Why the regex: merges never cross the pieces it cuts (letters, digits, punctuation runs, spaces,
and English contractions), so "dog." and "dog!" share the token for "dog".
"""

from __future__ import annotations

from functools import cache

import regex

# GPT-2's split pattern; the leading space stays attached to the following word.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_SPLIT = regex.compile(GPT2_PATTERN)


@cache
def bytes_to_unicode() -> dict[int, str]:
    """Byte value -> printable character (printable Latin-1 bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += list(range(ord("®"), ord("ÿ") + 1))
    table, shifted = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


@cache
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def byte_alphabet() -> list[str]:
    """The 256 base symbols, in byte order."""
    return list(bytes_to_unicode().values())


def pretokenize(text: str) -> list[str]:
    """Split with the GPT-2 regex and spell each piece as byte characters."""
    table = bytes_to_unicode()
    return ["".join(table[b] for b in piece.encode("utf-8")) for piece in _SPLIT.findall(text)]


def to_bytes(symbols: str) -> bytes:
    """Inverse of the byte spelling; raises KeyError naming a character outside the table."""
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in symbols)
    except KeyError as e:
        raise KeyError(f"{e.args[0]!r} in {symbols!r} is not a byte-level symbol") from None
