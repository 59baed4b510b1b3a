"""The offline seq2seq tasks (llm/data/seq2seq_tasks.py): the rules on hand-worked examples,
line selection, a deterministic split with disjoint sources, and the real Shakespeare task."""

from __future__ import annotations

import pytest

from llm.data.seq2seq_tasks import (
    MAX_CHARS,
    TASKS,
    make_pairs,
    normalise_line,
    select_lines,
    split_lines,
    task_pairs,
)


def test_rules_on_hand_worked_examples():
    assert TASKS["reverse_words"]("to be or not") == "not or be to"
    # consonant clusters move with "ay"; a leading vowel takes "way"
    assert TASKS["pig_latin"]("string apple the rhythm") == "ingstray appleway ethay rhythmay"
    assert TASKS["rot13"]("hello world") == "uryyb jbeyq"
    assert TASKS["rot13"](TASKS["rot13"]("why so pale")) == "why so pale"


def test_line_selection():
    assert normalise_line("O, 'tis the Queen!--my LORD") == "o tis the queen my lord"
    text = "Exit.\nTo be, or not to be?\nto be or not to be\n" + "word " * 12 + "\n"
    assert select_lines([text]) == ["to be or not to be"]  # 1 word, a duplicate, 12 words
    assert select_lines(["a " * 19 + "b"]) == []  # 20 words
    long = " ".join(["abcdefghij"] * 4)  # 4 words, 43 characters
    assert len(long) > MAX_CHARS and select_lines([long]) == []


def test_split_is_deterministic_and_disjoint():
    lines = [f"line number {i} here" for i in range(200)]
    a, b = split_lines(lines, 0, 0.1), split_lines(lines, 0, 0.1)
    assert a == b and len(a["validation"]) == 20 and len(a["train"]) == 180
    assert not set(a["train"]) & set(a["validation"])
    assert sorted(a["train"] + a["validation"]) == sorted(lines)
    assert split_lines(lines, 1, 0.1)["validation"] != a["validation"]
    with pytest.raises(ValueError, match="no seq2seq task 'nope'"):
        make_pairs("nope", lines)


def test_shakespeare_task():
    """The built-in corpus (prepared offline on first use): thousands of disjoint pairs."""
    train = task_pairs("reverse_words", "train", 0, 0.05)
    val = task_pairs("reverse_words", "validation", 0, 0.05)
    assert len(val) > 1000 and len(train) > 19 * len(val) - 19
    assert not {s for s, _ in train} & {s for s, _ in val}
    assert all(t == " ".join(reversed(s.split())) for s, t in val)
    assert val == task_pairs("reverse_words", "validation", 0, 0.05)
