"""N-gram lookup drafting: which match it picks and what it copies."""

import numpy as np
import pytest

from llm.inference.ngram_draft import NGramDrafter, ngram_proposal


def test_copies_what_followed_the_match():
    assert ngram_proposal([1, 2, 3, 9, 8, 7, 1, 2, 3], gamma=3) == [9, 8, 7]
    assert ngram_proposal([1, 2, 3, 9, 8, 7, 1, 2, 3], gamma=2) == [9, 8]


def test_longest_ngram_wins():
    context = [7, 3, 8, 1, 3, 9, 7, 3]  # "7 3" -> 8; the later "3" alone -> 9
    assert ngram_proposal(context, gamma=1, max_n=2) == [8]
    assert ngram_proposal(context, gamma=1, max_n=1) == [9]


def test_most_recent_occurrence_wins():
    assert ngram_proposal([1, 2, 5, 1, 2, 6, 1, 2], gamma=1) == [6]


def test_copying_past_the_end_repeats_the_period():
    # the earlier "4" is two tokens back: "5 4" is taken to repeat
    assert ngram_proposal([0, 4, 5, 4], gamma=5) == [5, 4, 5, 4, 5]
    assert ngram_proposal([3, 7, 7, 7], gamma=4) == [7, 7, 7, 7]  # period 1


def test_overlapping_match_continues_a_loop():
    assert ngram_proposal([1, 2, 1, 2], gamma=3) == [1, 2, 1]


def test_min_n_rejects_short_matches():
    assert ngram_proposal([5, 1, 6, 1], gamma=2, max_n=3, min_n=2) == []
    assert ngram_proposal([5, 1, 6, 1], gamma=2, max_n=3, min_n=1) == [6, 1]


def test_no_match_proposes_nothing():
    assert ngram_proposal([1, 2, 3, 4], gamma=3) == []
    assert ngram_proposal([4], gamma=3) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gamma": 0}, "gamma=0"),
        ({"gamma": 2, "max_n": 0}, "min_n <= max_n"),
        ({"gamma": 2, "max_n": 2, "min_n": 3}, "min_n <= max_n"),
        ({"gamma": 2, "min_n": 0}, "1 <= min_n"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ngram_proposal([1, 2, 1], **kwargs)


def test_drafter_rejects_bad_n():
    with pytest.raises(ValueError, match="min_n <= max_n"):
        NGramDrafter(max_n=0)
    with pytest.raises(ValueError, match="min_n <= max_n"):
        NGramDrafter(max_n=2, min_n=3)


def test_drafter_pads_and_respects_limits():
    history = [[1, 2, 3, 4, 1, 2], [1, 2, 3, 4], [5, 6, 5]]  # match, no match, match
    last_B = np.zeros(4, np.int32)  # a fourth padding row
    limits_B = np.array([2, 3, 0, 3])
    p = NGramDrafter().propose(history, last_B, None, limits_B, gamma=3)
    assert np.asarray(p.drafts_Bg).shape == (4, 3)
    assert np.asarray(p.sizes_B).tolist() == [2, 0, 0, 0]  # row 0 capped, row 2 limit 0
    assert np.asarray(p.drafts_Bg)[0, :2].tolist() == [3, 4]
    assert p.q_BgV is None
