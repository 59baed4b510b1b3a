"""Rule-based sequence-to-sequence tasks generated offline from Shakespeare's lines.

    data:
      format: seq2seq
      corpus: task:reverse_words       # or task:pig_latin, task:rot13

The sources are the verse and prose lines of the built-in `shakespeare` corpus
(`llm.data.corpora.prepare_builtin`), normalised to lower-case words of letters (apostrophes
dropped, any other character a word break) and kept when they have MIN_WORDS..MAX_WORDS words
and at most MAX_CHARS characters. Each distinct line is one example; the target is a fixed rule
applied to it:

  * reverse_words: the words in reverse order ("to be or not" -> "not or be to"), a reordering
    that a decoder must do with attention over the whole source (the word-reversal probe of
    sequence-to-sequence learning, cf. Sutskever et al. 2014, arXiv:1409.3215, sec. 3.3);
  * pig_latin: each word's leading consonants moved to its end plus "ay" ("string" ->
    "ingstray"), "way" after a word that starts with a vowel ("apple" -> "appleway");
  * rot13: every letter shifted 13 places (a character-level substitution cipher).

Deterministic by seed: the distinct lines are sorted, permuted with `numpy.random.default_rng(
seed)`, and the first `max(1, round(val_fraction n))` of the permutation are the validation
split. Sources are distinct, so the two splits never share a source; reverse_words and rot13
are one-to-one, so they never share a target either. pig_latin is not one-to-one ("will" and
"ill" both give "illway"), so a validation target may also be a training target, from a
different source.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable

import numpy as np

from llm.data.corpora import prepare_builtin

MIN_WORDS = 3  # shorter lines are too easy to memorise as a whole
MAX_WORDS = 8
MAX_CHARS = 40  # characters of a normalised source line (a target is as long or +2/word)
VOWELS = "aeiou"


def reverse_words(text: str) -> str:
    return " ".join(reversed(text.split()))


def pig_latin_word(word: str) -> str:
    if word[0] in VOWELS:
        return word + "way"
    head = re.match(rf"[^{VOWELS}]+", word).group(0)  # type: ignore[union-attr]
    return word[len(head) :] + head + "ay"


def pig_latin(text: str) -> str:
    return " ".join(pig_latin_word(w) for w in text.split())


def rot13(text: str) -> str:
    return "".join(chr((ord(c) - 97 + 13) % 26 + 97) if "a" <= c <= "z" else c for c in text)


TASKS: dict[str, Callable[[str], str]] = {
    "reverse_words": reverse_words,
    "pig_latin": pig_latin,
    "rot13": rot13,
}


def normalise_line(line: str) -> str:
    """Lower-case words of letters: apostrophes dropped, anything else separates words."""
    text = line.lower().replace("'", "").replace("\u2019", "")
    return " ".join(re.sub(r"[^a-z]+", " ", text).split())


def select_lines(texts: Iterable[str]) -> list[str]:
    """The distinct normalised lines of `texts` that fit the task limits, sorted."""
    kept = set()
    for text in texts:
        for raw in text.splitlines():
            line = normalise_line(raw)
            if MIN_WORDS <= len(line.split()) <= MAX_WORDS and len(line) <= MAX_CHARS:
                kept.add(line)
    return sorted(kept)


def split_lines(lines: list[str], seed: int, val_fraction: float) -> dict[str, list[str]]:
    """{"train", "validation"}: a seeded split of distinct lines (validation at least one)."""
    if len(lines) < 2:
        raise ValueError(f"a seq2seq task needs at least 2 distinct lines, got {len(lines)}")
    order = np.random.default_rng(seed).permutation(len(lines))
    n_val = min(len(lines) - 1, max(1, round(val_fraction * len(lines))))
    return {
        "validation": [lines[i] for i in order[:n_val]],
        "train": [lines[i] for i in order[n_val:]],
    }


def make_pairs(name: str, lines: Iterable[str]) -> list[tuple[str, str]]:
    """(source, rule(source)) for each line under the task `name`."""
    if name not in TASKS:
        raise ValueError(f"data.corpus: no seq2seq task {name!r} (tasks: {sorted(TASKS)})")
    rule = TASKS[name]
    return [(line, rule(line)) for line in lines]


@functools.lru_cache(maxsize=2)
def shakespeare_lines(cache: str | None = None) -> tuple[str, ...]:
    """`select_lines` over the built-in Shakespeare corpus (prepared offline on first use)."""
    path = prepare_builtin("shakespeare", cache)
    with path.open(encoding="utf-8") as f:
        return tuple(select_lines(json.loads(line)["text"] for line in f))


def task_pairs(
    name: str, split: str, seed: int, val_fraction: float, cache: str | None = None
) -> list[tuple[str, str]]:
    """The (source, target) pairs of task `name`'s `split` ("train" | "validation")."""
    if name not in TASKS:
        raise ValueError(f"data.corpus: no seq2seq task {name!r} (tasks: {sorted(TASKS)})")
    return make_pairs(name, split_lines(list(shakespeare_lines(cache)), seed, val_fraction)[split])
