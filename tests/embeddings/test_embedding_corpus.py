"""Word-embedding corpus: the tokeniser's rule, the vocabulary's order, subsampling and noise
probabilities by their formulas, and context windows against a brute-force enumeration."""

from __future__ import annotations

import numpy as np
import pytest

from llm.embeddings.corpus import (
    Flat,
    Vocab,
    context_matrix,
    keep_probability,
    noise_distribution,
    read_text_file,
    tokenize,
    window_pairs,
)


def test_tokenize_keeps_inner_apostrophes_and_drops_the_rest():
    text = "O'er the Hill, 'tis THOU art -- 42 times; thou'rt Romeo's."
    assert tokenize(text) == "o'er the hill tis thou art times thou'rt romeo's".split()


def test_vocab_orders_by_count_then_word_and_drops_rare_words():
    sentences = [["b", "a", "c", "b"], ["a", "d", "b", "c"], ["e"]]
    vocab = Vocab.build(sentences, min_count=2)
    assert vocab.words == ("b", "a", "c")  # b x3; a, c x2 (a before c); d, e dropped
    assert vocab.counts.tolist() == [3, 2, 2]
    encoded = vocab.encode(sentences)
    assert [e.tolist() for e in encoded] == [[0, 1, 2, 0], [1, 0, 2]]  # ["e"] is empty: dropped
    with pytest.raises(ValueError, match="min_count"):
        Vocab.build(sentences, min_count=10)


def test_keep_probability_and_noise_follow_the_formulas():
    counts = np.array([900, 90, 9, 1])
    freq = counts / 1000
    # Mikolov et al. 2013b eq. 5: P(discard) = 1 - sqrt(t / f), so keep = min(1, sqrt(t / f))
    np.testing.assert_allclose(keep_probability(counts, 0.01), np.minimum(1, np.sqrt(0.01 / freq)))
    assert keep_probability(counts, 0.0).tolist() == [1, 1, 1, 1]
    noise = noise_distribution(counts)
    np.testing.assert_allclose(noise, counts**0.75 / (counts**0.75).sum())
    assert noise[3] / noise[0] == pytest.approx((1 / 900) ** 0.75)


def brute_pairs(sentences, reach):
    """(center, context, offset) of every token pair within the center's reach, per sentence."""
    out, pos = [], 0
    for s in sentences:
        for i in range(len(s)):
            for j in range(len(s)):
                if i != j and abs(i - j) <= reach[pos + i]:
                    out.append((int(s[i]), int(s[j]), j - i))
        pos += len(s)
    return sorted(out)


def test_context_windows_equal_brute_force():
    rng = np.random.default_rng(0)
    sentences = [rng.integers(0, 9, size=n).astype(np.int32) for n in (1, 7, 3, 12)]
    flat, window = Flat.of(sentences), 3
    center, context, mask = context_matrix(flat, window, np.random.default_rng(5))
    reach = np.random.default_rng(5).integers(1, window + 1, size=len(flat.ids_N))
    offsets = [o for o in range(-window, window + 1) if o]
    ours = sorted(
        (int(center[i]), int(context[i, c]), offsets[c])
        for i, c in zip(*np.nonzero(mask), strict=True)
    )
    assert ours == brute_pairs(sentences, reach)
    c_p, x_p = window_pairs(flat, window, np.random.default_rng(5))
    assert sorted(zip(c_p.tolist(), x_p.tolist(), strict=True)) == sorted(
        (a, b) for a, b, _ in ours
    )


def test_subsample_drops_by_word_probability():
    flat = Flat.of([np.array([0] * 5000 + [1] * 5000, np.int32)])
    kept = flat.subsample(np.array([0.2, 1.0]), np.random.default_rng(0))
    assert (kept.ids_N == 1).sum() == 5000
    assert abs((kept.ids_N == 0).sum() - 1000) < 100  # binomial sd 28


def test_read_text_file_refuses_an_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n  \n")
    with pytest.raises(ValueError, match=r"empty\.txt"):
        read_text_file(path)
