"""Text cleaning and document quality filters.

Cleaning is conservative because line structure carries meaning in plays and verse: Unicode
normalization (NFC by default, so that visually identical strings tokenize identically),
removal of control and zero-width characters, Windows/Mac line endings to `\\n`, trailing
spaces removed and runs of blank lines capped at two. Indentation and single line breaks stay.

The quality filters are the simplest heuristics of Gopher's MassiveText rules (Rae et al. 2021,
"Scaling Language Models", appendix A): a minimum length, a maximum fraction of symbol
characters, and a maximum fraction of characters in repeated lines (boilerplate, menus, logs).
"""

from __future__ import annotations

import collections
import re
import unicodedata

# C0/C1 controls except \t and \n, plus zero-width and byte-order-mark characters.
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_BLANK_RUN_RE = re.compile(r"\n{4,}")
_TRAILING_SPACE_RE = re.compile(r"[ \t\u00a0\u3000]+(?=\n)")
# Lines shorter than this are ignored by the repetition filter: speaker tags ("Ham."), stage
# directions ("[Exit.]") and blank lines legitimately repeat in plays.
MIN_REPEATED_LINE_CHARS = 30


def clean_text(text: str, normalize: str, counts: collections.Counter) -> str:
    """Normalizes one document; `counts` accumulates characters removed per cleaning step."""
    if normalize != "none":
        normalized = unicodedata.normalize(normalize, text)
        counts["documents changed by normalization"] += normalized != text
        text = normalized
    unix = text.replace("\r\n", "\n").replace("\r", "\n")
    counts["line-ending characters removed"] += len(text) - len(unix)
    text = unix
    without_control = _CONTROL_RE.sub("", text)
    counts["control characters removed"] += len(text) - len(without_control)
    text = without_control
    tidy = _BLANK_RUN_RE.sub("\n\n\n", _TRAILING_SPACE_RE.sub("", text + "\n")).strip()
    counts["whitespace characters removed"] += len(text) - len(tidy)
    return tidy


def symbol_ratio(text: str) -> float:
    """Fraction of characters that are neither letters/digits nor whitespace."""
    if not text:
        return 0.0
    symbols = sum(1 for ch in text if not (ch.isalnum() or ch.isspace()))
    return symbols / len(text)


def dup_line_ratio(text: str) -> float:
    """Fraction of characters in lines (of at least MIN_REPEATED_LINE_CHARS) seen earlier."""
    seen: set[str] = set()
    repeated = 0
    for line in text.split("\n"):
        line = line.strip()
        if len(line) < MIN_REPEATED_LINE_CHARS:
            continue
        if line in seen:
            repeated += len(line)
        seen.add(line)
    return repeated / max(len(text), 1)


def quality_problem(
    text: str, min_chars: int, max_symbol_ratio: float, max_dup_line_ratio: float
) -> str | None:
    """The name of the first quality filter `text` fails, or None if it passes all."""
    if len(text) < min_chars:
        return "too short"
    if symbol_ratio(text) > max_symbol_ratio:
        return "too many symbols"
    if dup_line_ratio(text) > max_dup_line_ratio:
        return "repeated lines"
    return None
