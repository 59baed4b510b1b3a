"""One entry point for every trainer, used by `llm tokenizer train` and the benchmark.

Algorithms: "spm-bpe" and "spm-unigram" (the sentencepiece library), and our from-scratch
"bpe" (byte-level, GPT-2 style), "wordpiece" (BERT) and "unigram" (SentencePiece-style EM).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ALGORITHMS = ("spm-bpe", "spm-unigram", "bpe", "wordpiece", "unigram")


def iter_lines(files: Sequence[str | Path]) -> Iterator[str]:
    """Lines of UTF-8 text files, newline kept; bad bytes raise naming the file and line."""
    for f in files:
        with open(f, "rb") as handle:
            for lineno, raw in enumerate(handle, 1):
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{f}:{lineno}: invalid UTF-8 ({e.reason})") from None


def default_output(algo: str, out: str | Path) -> Path:
    """Our BPE and WordPiece save `tokenizer.json` files, the others `.model` files."""
    out = Path(out)
    if out.suffix in (".json", ".model"):
        return out
    return out.with_suffix(".json" if algo in ("bpe", "wordpiece") else ".model")


def train_tokenizer(
    algo: str,
    files: Sequence[str | Path],
    vocab_size: int,
    out: str | Path,
    *,
    min_frequency: int = 0,
    character_coverage: float | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train `algo` on text `files` and save it; returns the file `load_tokenizer` reads.
    (A built-in corpus becomes a text file with `llm.data.corpora.text_files`.)"""
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algo!r}; choose one of {', '.join(ALGORITHMS)}")
    if not files:
        raise ValueError("no training files given")
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"training files {missing} do not exist")
    paths = [Path(f) for f in files]
    return _train(algo, paths, vocab_size, out, min_frequency, character_coverage, log)


def _train(
    algo: str,
    files: list[Path],
    vocab_size: int,
    out: str | Path,
    min_frequency: int,
    character_coverage: float | None,
    log: Callable[[str], None] | None,
) -> Path:
    out = default_output(algo, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if algo.startswith("spm-"):
        from llm.tokenizers.sentencepiece import train_sentencepiece

        coverage = 0.9995 if character_coverage is None else character_coverage
        return train_sentencepiece(files, out, vocab_size, algo[4:], character_coverage=coverage)
    if algo == "bpe":
        from llm.tokenizers.bpe import train_bpe

        tok = train_bpe(iter_lines(files), vocab_size, min_frequency=min_frequency)
    elif algo == "wordpiece":
        from llm.tokenizers.wordpiece import train_wordpiece

        tok = train_wordpiece(iter_lines(files), vocab_size, min_frequency=min_frequency)
    else:
        from llm.tokenizers.unigram_train import train_unigram

        coverage = 1.0 if character_coverage is None else character_coverage
        tok = train_unigram(iter_lines(files), vocab_size, character_coverage=coverage, log=log)
    tok.save(out)
    return out
