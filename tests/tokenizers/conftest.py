"""A synthetic English-like corpus for tokenizer tests: no network, deterministic, small.

Words are built from syllables and drawn with Zipf-like frequencies, so frequent pairs, rare
words, capitals, contractions, digits, punctuation and a few non-ASCII characters all appear,
as they do in real text. The held-out part contains characters never seen in training.
"""

from __future__ import annotations

import random

import pytest

SYLLABLES = (
    "the an ing er th ou ch qu st re de pro con al is it on at or en ly ness ment tion wh sh "
    "be lo ve li ma ra to fa ne ro sa mi ki gu po ba du"
).split()
PUNCT = [",", ".", ";", "!", "?", ":", "'s", "n't", " -", " \u2014", "\u2019s"]
ACCENTED = ["caf\u00e9", "na\u00efve", "\u00fcber", "se\u00f1or", "fa\u00e7ade"]


def _vocabulary(rng: random.Random, n: int) -> list[str]:
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.choice([1, 1, 2, 2, 3, 4]))))
    return sorted(words) + ACCENTED


def _line(rng: random.Random, words: list[str], weights: list[float]) -> str:
    out = []
    for _ in range(rng.randint(3, 14)):
        w = rng.choices(words, weights)[0]
        r = rng.random()
        if r < 0.1:
            w = w.capitalize()
        elif r < 0.13:
            w = str(rng.randint(0, 2000))
        if rng.random() < 0.15:
            w += rng.choice(PUNCT)
        out.append(w)
    sep = "  " if rng.random() < 0.05 else " "
    return sep.join(out) + "\n"


def make_corpus(n_lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = _vocabulary(rng, 600)
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    rng.shuffle(weights)
    return [_line(rng, words, weights) for _ in range(n_lines)]


# Seen only in held-out text: unknown to every trained vocabulary.
UNSEEN = "Zebra\u00df \u65e5\u672c\u8a9e \u2603 \U0001f600 tab\there \u00c5ngstr\u00f6m\n"


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return make_corpus(1500, seed=0)


@pytest.fixture(scope="session")
def held_out() -> str:
    return "".join(make_corpus(200, seed=1)) + UNSEEN


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory, corpus) -> str:
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text("".join(corpus), encoding="utf-8")
    return str(path)
