"""Exact match: the normalisation's golden cases, and answers equal to a plain greedy decoder.

The reference is tests/interop/greedy.py (argmax over a full forward per token, no KV cache)
on the same ChatML-rendered prompt, so the engine path (ragged prompts in one batch, stop at
the end-of-turn token) is checked against an independent decoder.
"""

from __future__ import annotations

import pytest

from llm.eval.exact_match import exact_match, normalise
from llm.tokenizers.chat import apply_chat
from tests.data.sft_fixtures import chatml_tokenizer
from tests.interop.greedy import greedy
from tests.model.conftest import make_cfg, params_for


@pytest.mark.parametrize(
    ("answer", "reference", "same"),
    [
        ("Paris.", "paris", True),  # case and a trailing period
        ("  1 Samuel!\n", "1 samuel", True),  # surrounding whitespace, trailing "!"
        ("Song of\n  Solomon", "Song of Solomon", True),  # inner whitespace runs
        ("Hamlet’”", "HAMLET", True),  # curly closing quotes
        ("The capital is Paris.", "Paris", False),  # no containment
        ("John", "1 John", False),  # no article or number stripping
        ("Paris, France", "Paris France", False),  # inner punctuation kept
    ],
)
def test_normalise(answer, reference, same):
    assert (normalise(answer) == normalise(reference)) is same


def test_answers_equal_plain_greedy_and_scores_normalised_matches(tmp_path):
    tok = chatml_tokenizer(tmp_path / "model")
    cfg = make_cfg(vocab_size=tok.vocab_size, max_seq_len=128)
    params = params_for(cfg)
    questions = ["What is the capital of France?", "Name a river.", "Quote Genesis 1:3."]
    stop = tok.chat_template.stop_ids()
    expected = []
    for q in questions:
        prompt = apply_chat(tok, [{"role": "user", "content": q}], add_generation_prompt=True)
        ids = greedy(cfg, params, prompt, 6, stop_ids=stop)
        expected.append(tok.decode([i for i in ids if i not in stop]))
    references = [expected[0], expected[1].upper() + " !", "not " + expected[2]]
    records = [
        ([{"role": "user", "content": q}, {"role": "assistant", "content": r}], f"r:{k}")
        for k, (q, r) in enumerate(zip(questions, references, strict=True))
    ]
    result = exact_match(cfg, params, tok, records, max_new_tokens=6, batch_size=2)
    assert result.predictions == expected
    assert (result.correct, result.total) == (2, 3)
    with pytest.raises(ValueError, match="r:0: the last message is not the assistant's"):
        exact_match(cfg, params, tok, [(records[0][0][:1], "r:0")])
