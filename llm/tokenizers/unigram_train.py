"""Training a unigram tokenizer the SentencePiece way (Kudo 2018, section 3.2).

1. Seed: every character, plus the most frequent substrings of words (score frequency x length),
   words being the "▁"-prefixed space-separated units SentencePiece trains on.
2. EM: the E-step runs forward-backward over each word's lattice of pieces to get each piece's
   expected count; the M-step sets scores to digamma(count) - digamma(total), SentencePiece's
   "Bayesianified" EM, and drops pieces expected fewer than 0.5 times.
3. Prune: for each piece, the loss in corpus likelihood if its uses were re-segmented with the
   other pieces; keep the best `shrinking_factor` share (75%) and go back to 2 until the
   vocabulary is 10% larger than asked for, then keep the highest-scoring pieces.

Where we differ from `spm_train` (so vocabularies overlap but are not identical):
- the seed: SentencePiece enumerates repeated substrings with a suffix array over whole
  sentences (suffix-tree nodes only); we count every substring of 2..16 characters that occurs
  at least twice inside a word, which is a superset ranked the same way;
- we never split pieces by Unicode script or digits (run spm with --split_by_unicode_script=false
  --split_by_number=false to compare like with like);
- characters are never pruned (SentencePiece re-adds them at the end instead);
- arithmetic is float64 throughout (SentencePiece mixes float32 and float64).
Given the same pieces and scores, encodings are identical (see `llm.tokenizers.unigram`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from llm.tokenizers.specials import DEFAULT_SPECIALS
from llm.tokenizers.unigram import (
    BYTE,
    CONTROL,
    SPACE,
    UNK_PENALTY,
    UNKNOWN,
    Piece,
    UnigramTokenizer,
    byte_piece,
)

MAX_PIECE_CHARS = 16  # SentencePiece's max_sentencepiece_length
MIN_EXPECTED_COUNT = 0.5  # M-step drops rarer pieces (SentencePiece's kExpectedFrequencyThreshold)


def digamma(x: float) -> float:
    """psi(x) by recurrence up to x >= 10, then the asymptotic series (error < 1e-13)."""
    result = 0.0
    while x < 10.0:
        result -= 1.0 / x
        x += 1.0
    inv2 = 1.0 / (x * x)
    series = inv2 * (1 / 12 - inv2 * (1 / 120 - inv2 * (1 / 252 - inv2 * (1 / 240 - inv2 / 132))))
    return result + math.log(x) - 0.5 / x - series


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a if b == -math.inf else a + math.log1p(math.exp(b - a))


def count_words(texts: Iterable[str], add_dummy_prefix: bool = True) -> Counter[str]:
    """Words ("▁"-prefixed) and their counts, split as SentencePiece splits sentences."""
    counts: Counter[str] = Counter()
    for text in texts:
        for line in text.splitlines():
            s = line.replace(" ", SPACE)
            if not s:
                continue
            s = SPACE + s if add_dummy_prefix else s
            start = 0
            for i in range(1, len(s)):
                if s[i] == SPACE:
                    counts[s[start:i]] += 1
                    start = i
            counts[s[start:]] += 1
    return counts


def required_chars(words: Counter[str], coverage: float) -> dict[str, int]:
    """The most frequent characters covering `coverage` of all character occurrences."""
    chars: Counter[str] = Counter()
    for w, n in words.items():
        for c in w:
            chars[c] += n
    total, kept, seen = sum(chars.values()), {}, 0
    for c, n in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0])):
        if kept and seen / total >= coverage:
            break
        kept[c] = n
        seen += n
    return kept


def seed_pieces(words: Counter[str], chars: dict[str, int], seed_size: int) -> dict[str, float]:
    """Characters plus frequent substrings (no inner "▁", known chars only) as log-probs."""
    subs: Counter[str] = Counter()
    for w, n in words.items():
        for i in range(len(w)):
            for j in range(i + 2, min(len(w), i + MAX_PIECE_CHARS) + 1):
                sub = w[i:j]
                if SPACE in sub[1:] or sub[-1] not in chars:
                    break
                if sub[0] in chars:
                    subs[sub] += n
    ranked = sorted(
        ((n * len(s), s) for s, n in subs.items() if n >= 2), key=lambda t: (-t[0], t[1])
    )
    seed = {c: float(n) for c, n in chars.items()}
    for score, s in ranked[: max(0, seed_size - len(seed))]:
        seed[s] = float(score)
    log_total = math.log(sum(seed.values()))
    return {s: math.log(v) - log_total for s, v in seed.items()}


Span = tuple[int, int, str]  # (start, end, piece) of one lattice node; piece "" = unknown char


def spans(word: str, vocab: dict[str, float], max_len: int) -> list[Span]:
    """The lattice of `word`: every vocabulary piece inside it, ordered by end position."""
    out = []
    for j in range(1, len(word) + 1):
        for i in range(max(0, j - max_len), j):
            piece = word[i:j]
            if piece in vocab:
                out.append((i, j, piece))
            elif j == i + 1:
                out.append((i, j, ""))
    return out


def _forward_backward(lattice: list[Span], n: int, p: dict[str, float]):
    """Sums over segmentations of exp(score) in linear space; None if they underflow."""
    alpha = [1.0] + [0.0] * n
    for i, j, piece in lattice:
        alpha[j] += alpha[i] * p[piece]
    beta = [0.0] * n + [1.0]
    for i, j, piece in reversed(lattice):
        beta[i] += beta[j] * p[piece]
    return (alpha, beta, alpha[n]) if 0.0 < alpha[n] < math.inf else None


def _log_forward_backward(lattice: list[Span], n: int, s: dict[str, float]):
    """The same in log space, for words so long that probabilities underflow."""
    alpha = [0.0] + [-math.inf] * n
    for i, j, piece in lattice:
        alpha[j] = _logaddexp(alpha[j], alpha[i] + s[piece])
    beta = [-math.inf] * n + [0.0]
    for i, j, piece in reversed(lattice):
        beta[i] = _logaddexp(beta[i], beta[j] + s[piece])
    return alpha, beta, alpha[n]


def _with_unknown(scores: dict[str, float]) -> dict[str, float]:
    """Scores plus "" for an unknown character: min(score) - 10, as in SentencePiece."""
    return {**scores, "": min(scores.values()) - UNK_PENALTY}


def expected_counts(
    words: Counter[str], lattices: list[list[Span]], scores: dict[str, float]
) -> tuple[dict[str, float], float]:
    """E-step: forward-backward per word; returns expected piece counts and log-likelihood."""
    s = _with_unknown(scores)
    p = {piece: math.exp(v) for piece, v in s.items()}
    counts: dict[str, float] = dict.fromkeys(s, 0.0)
    loglik = 0.0
    for (word, n), lattice in zip(words.items(), lattices, strict=True):
        linear = _forward_backward(lattice, len(word), p)
        if linear is not None:
            alpha, beta, z = linear
            loglik += n * math.log(z)
            for i, j, piece in lattice:
                counts[piece] += n * alpha[i] * p[piece] * beta[j] / z
        else:
            alpha, beta, z = _log_forward_backward(lattice, len(word), s)
            loglik += n * z
            for i, j, piece in lattice:
                counts[piece] += n * math.exp(alpha[i] + s[piece] + beta[j] - z)
    del counts[""]
    return counts, loglik


def m_step(counts: dict[str, float], chars: dict[str, int]) -> dict[str, float]:
    """Bayesian M-step: score = digamma(count) - digamma(sum); rare non-characters dropped."""
    kept = {p: c for p, c in counts.items() if c >= MIN_EXPECTED_COUNT or p in chars}
    kept = {p: max(c, 1e-6) for p, c in kept.items()}
    log_sum = digamma(sum(kept.values()))
    return {p: digamma(c) - log_sum for p, c in kept.items()}


def best_path(lattice: list[Span], word: str, s: dict[str, float], skip_whole=False) -> list[str]:
    """Viterbi segmentation (optionally forbidding the single whole-word piece)."""
    best = [0.0] + [-math.inf] * len(word)
    back = [0] * (len(word) + 1)
    for i, j, piece in lattice:
        if skip_whole and i == 0 and j == len(word):
            continue
        if best[i] + s[piece] > best[j]:
            best[j], back[j] = best[i] + s[piece], i
    path, j = [], len(word)
    while j > 0:
        path.append(word[back[j] : j])
        j = back[j]
    return path[::-1]


def prune(
    words: Counter[str],
    lattices: list[list[Span]],
    scores: dict[str, float],
    chars: dict[str, int],
    size: int,
) -> dict[str, float]:
    """Keep the `size` pieces whose removal would cost the corpus likelihood most.

    A piece's uses (Viterbi counts) would go to its best alternative segmentation; the loss is
    the frequency-weighted drop in log-probability. Pieces that are never used, or that are not
    their own best segmentation, go first; characters and pieces without alternative stay.
    """
    s = _with_unknown(scores)
    max_len = max(len(p) for p in scores)
    freq = dict.fromkeys(scores, 0.0)
    for (word, n), lattice in zip(words.items(), lattices, strict=True):
        for piece in best_path(lattice, word, s):
            if piece in freq:
                freq[piece] += n
    total_words, sum_freq = sum(words.values()), sum(freq.values())
    kept, candidates = [], []
    for piece in scores:
        if piece in chars:
            kept.append(piece)
            continue
        own = spans(piece, scores, max_len)
        if freq[piece] == 0 or best_path(own, piece, s) != [piece]:
            continue
        alt = best_path(own, piece, s, skip_whole=True)
        logp = math.log(freq[piece]) - math.log(sum_freq)
        log_sum_alt = math.log(sum_freq + freq[piece] * (len(alt) - 1))
        logp_alt = sum(math.log(freq.get(a, 0.0) + freq[piece]) - log_sum_alt for a in alt)
        candidates.append((freq[piece] / total_words * (logp - logp_alt), piece))
    candidates.sort(key=lambda t: (-t[0], t[1]))
    kept += [piece for _, piece in candidates[: max(0, size - len(kept))]]
    return {p: scores[p] for p in kept}


def finalize(scores: dict[str, float], chars: dict[str, int], n_normal: int) -> list[Piece]:
    """All required characters, then the best-scoring pieces, sorted by score."""
    final: dict[str, float] = {}
    low = min(scores.values())
    for c in sorted(chars, key=lambda c: (-chars[c], c)):
        final[c] = scores.get(c, low)
    for piece, s in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(final) >= n_normal:
            break
        final.setdefault(piece, s)
    return [Piece(p, s) for p, s in sorted(final.items(), key=lambda kv: (-kv[1], kv[0]))]


def train_unigram(
    texts: Iterable[str],
    vocab_size: int,
    *,
    special_tokens: Sequence[str] = tuple(DEFAULT_SPECIALS.as_list()),
    character_coverage: float = 1.0,
    seed_size: int = 1_000_000,
    shrinking_factor: float = 0.75,
    em_steps: int = 2,
    log: Callable[[str], None] | None = None,
) -> UnigramTokenizer:
    """Train a unigram tokenizer with `vocab_size` pieces: <unk>, specials, 256 bytes, pieces.

    `log`, if given, is called with one line per round (sizes and log-likelihood).
    """
    words = count_words(texts)
    if not words:
        raise ValueError("cannot train a unigram tokenizer on an empty corpus")
    chars = required_chars(words, character_coverage)
    n_normal = vocab_size - 1 - len(special_tokens) - 256
    if n_normal < len(chars):
        raise ValueError(
            f"{vocab_size=} leaves {n_normal} pieces after <unk>, {len(special_tokens)} specials"
            f" and 256 bytes, fewer than the {len(chars)} required characters"
        )
    scores = seed_pieces(words, chars, seed_size)
    max_len = max(len(p) for p in scores)
    lattices = [spans(w, scores, max_len) for w in words]
    desired = int(vocab_size * 1.1)  # SentencePiece stops pruning 10% above the target
    while True:
        for _ in range(em_steps):
            counts, loglik = expected_counts(words, lattices, scores)
            scores = m_step(counts, chars)
            lattices = [[t for t in lat if not t[2] or t[2] in scores] for lat in lattices]
        if log:
            log(f"unigram: {len(scores)} pieces, log-likelihood {loglik:.1f}")
        if len(scores) <= desired:
            break
        size = max(desired, int(shrinking_factor * len(scores)))
        scores = prune(words, lattices, scores, chars, size)
        lattices = [[t for t in lat if not t[2] or t[2] in scores] for lat in lattices]
    meta = [Piece("<unk>", 0.0, UNKNOWN)] + [Piece(s, 0.0, CONTROL) for s in special_tokens]
    meta += [Piece(byte_piece(b), 0.0, BYTE) for b in range(256)]
    return UnigramTokenizer(meta + finalize(scores, chars, n_normal))
