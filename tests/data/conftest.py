"""Small corpora built in temporary folders: no test of the data package touches the network."""

from __future__ import annotations

import numpy as np
import pytest

from llm.config import load_config

WORDS = [f"w{i}" for i in range(500)] + "the a of and to in is it that thou".split()


def random_text(rng: np.random.Generator, n_words: int) -> str:
    """Distinct documents: random words from a 510-word vocabulary, 12 words a line."""
    words = rng.choice(WORDS, size=n_words)
    lines = [" ".join(words[i : i + 12]) for i in range(0, n_words, 12)]
    return "\n".join(lines) + "\n"


def write_txt_corpus(folder, n_docs: int, seed: int = 0, min_words=20, max_words=200):
    """`n_docs` .txt files of random lengths; returns their texts in file-name order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(n_docs):
        text = random_text(rng, int(rng.integers(min_words, max_words)))
        (folder / f"doc{i:03d}.txt").write_text(text)
        texts.append(text)
    return texts


def small_overrides(corpus, cache, *overrides: str) -> list[str]:
    """Tiny batches over `corpus` with every document kept (min_chars=1)."""
    return [
        f"data.corpus={corpus}",
        f"data.cache_dir={cache}",
        "data.eval_corpus=null",
        "data.min_chars=1",
        "data.val_fraction=0.2",
        "train.batch_size=8",
        "train.seq_len=32",
        *overrides,
    ]


# Helpers are handed out as fixtures, not imported, so the tests do not depend on how pytest
# puts test folders on sys.path.
@pytest.fixture(name="random_text", scope="session")
def _random_text():
    return random_text


@pytest.fixture(name="small_overrides", scope="session")
def _small_overrides():
    return small_overrides


@pytest.fixture(name="small_config", scope="session")
def _small_config():
    return lambda corpus, cache, *extra: load_config(None, small_overrides(corpus, cache, *extra))


@pytest.fixture(scope="module")
def txt_corpus(tmp_path_factory):
    """(folder, texts) of 30 distinct random documents."""
    folder = tmp_path_factory.mktemp("corpus") / "txt"
    return folder, write_txt_corpus(folder, 30)
