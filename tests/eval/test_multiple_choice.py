"""Multiple choice by log-likelihood (llm/eval/multiple_choice.py).

* acc and acc_norm equal a plain NumPy computation from per-choice log-likelihoods scored one
  request at a time, unpadded (`reference_loglikelihood`), not by the batched Scorer;
* a golden case where acc and acc_norm disagree (acc_norm divides by the choice's characters,
  the delimiter not counted: lm_eval/api/task.py, `completion_len = len(choice)`);
* k-shot contexts: the exact text layout, seeded, never the item itself, the same in every
  run and whatever the other items;
* malformed records name file:line.
"""

from __future__ import annotations

import numpy as np
import pytest

from llm.data.sources import SourceError
from llm.eval import multiple_choice as mc
from llm.eval.likelihood import Scorer, reference_loglikelihood
from tests.eval.runner_fixtures import MC_RECORDS, tiny_model, write_jsonl


def test_acc_and_acc_norm_equal_numpy_over_reference_loglikelihoods(tmp_path):
    model = tiny_model()
    items = mc.read_items(write_jsonl(tmp_path / "t.jsonl", MC_RECORDS))
    got = mc.evaluate(Scorer(model, batch_size=4), items, shots=1, seed=3)
    scorer = Scorer(model)  # used only for its tokenisation and context cut
    acc, acc_norm = [], []
    for item in items:
        ctx = mc.context(item, mc.draw_shots(item, items, 1, 3))
        lls = np.array([
            reference_loglikelihood(model.config.model, model.params,
                                    scorer.fit(scorer.encode_pair(ctx, " " + c))).logprob
            for c in item.choices
        ])  # fmt: skip
        lengths = np.array([len(c) for c in item.choices])
        acc.append(float(np.argmax(lls) == item.gold))
        acc_norm.append(float(np.argmax(lls / lengths) == item.gold))
        np.testing.assert_allclose(got.lls[len(acc) - 1], lls, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(got.acc, acc)
    np.testing.assert_array_equal(got.acc_norm, acc_norm)
    assert 0 < np.mean(acc) < 1 or 0 < np.mean(acc_norm) < 1  # not all-equal outcomes
    for p, ll in zip(got.probs, got.lls, strict=True):
        np.testing.assert_allclose(p, np.exp(ll) / np.exp(ll).sum(), rtol=1e-9)


def test_acc_norm_divides_by_the_choice_characters():
    """Golden, by hand: lls -2 ("a"), -6 ("bbbbbb"), -2.5 ("cc"). acc picks "a" (-2 is the
    largest); per character -2, -1, -1.25, so acc_norm picks "bbbbbb" (the gold). Counting the
    delimiter (" a" 2, " bbbbbb" 7, " cc" 3 chars) would give -1, -0.857, -0.833: "cc"."""
    item = mc.MCItem("x", "q", ("a", "bbbbbb", "cc"), 1, None, "f:1")
    got = mc.score([item], [-2.0, -6.0, -2.5])
    assert got.acc.tolist() == [0.0] and got.pred.tolist() == [0]
    assert got.acc_norm.tolist() == [1.0]


def test_ties_go_to_the_first_choice_as_numpy_argmax():
    item = mc.MCItem("x", "q", ("ab", "cd"), 1, None, "f:1")
    assert mc.score([item], [-1.0, -1.0]).acc.tolist() == [0.0]


def test_kshot_context_layout():
    a = mc.MCItem("a", "Qa\nAnswer:", ("x", "y"), 1, None, "f:1")
    b = mc.MCItem("b", "Qb\nAnswer:", ("z", "w"), 0, None, "f:2")
    item = mc.MCItem("c", "Qc\nAnswer:", ("u", "v"), 0, None, "f:3")
    assert mc.context(item, [a, b]) == "Qa\nAnswer: y\n\nQb\nAnswer: z\n\nQc\nAnswer:"
    assert mc.context(item, []) == "Qc\nAnswer:"
    assert mc.requests([item], ["CTX"]) == [("CTX", " u"), ("CTX", " v")]


def test_shots_are_seeded_never_the_item_and_independent_of_the_other_items():
    pool = [mc.MCItem(f"i{k}", f"q{k}", ("a", "b"), 0, None, f"f:{k}") for k in range(20)]
    for item in pool:
        shots = mc.draw_shots(item, pool, 5, seed=7)
        assert item.id not in [s.id for s in shots]
        assert len({s.id for s in shots}) == 5  # without replacement
        assert shots == mc.draw_shots(item, pool, 5, seed=7)  # identical when repeated
    item = pool[3]
    drawn = {tuple(s.id for s in mc.draw_shots(item, pool, 5, seed)) for seed in range(10)}
    assert len(drawn) > 5  # the seed matters
    # another item's draw does not depend on which items come before it in the run
    first = [s.id for s in mc.draw_shots(pool[10], pool, 3, seed=1)]
    mc.draw_shots(pool[0], pool, 3, seed=1)
    assert [s.id for s in mc.draw_shots(pool[10], pool, 3, seed=1)] == first
    with pytest.raises(ValueError, match="f:3: 20 shots asked for, but the pool has 19"):
        mc.draw_shots(item, pool, 20, seed=0)


def test_shots_from_a_separate_pool_skip_an_item_with_the_same_id():
    item = mc.MCItem("same", "q", ("a", "b"), 0, None, "t:1")
    pool = [mc.MCItem("same", "q", ("a", "b"), 0, None, "p:1"),
            mc.MCItem("other", "p", ("a", "b"), 1, None, "p:2")]  # fmt: skip
    assert [s.id for s in mc.draw_shots(item, pool, 1, seed=0)] == ["other"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"id": "a", "query": "q", "choices": ["x", "y"]}',
            "t.jsonl:2: record is missing key 'gold'",
        ),
        (
            '{"id": "a", "query": "q", "choices": ["x", "y"], "gold": 2}',
            "t.jsonl:2: 'gold' 2 is not",
        ),
        ('{"id": "a", "query": "q", "choices": ["x"], "gold": 0}', "t.jsonl:2: 'choices' must be"),
        ('{"id": "a", "query": "q", "choices": ["x", ""], "gold": 0}', "t.jsonl:2: 'choices' must"),
        ('{"id": 3, "query": "q", "choices": ["x", "y"], "gold": 0}', "t.jsonl:2: 'id' is int"),
        ('{"id": "a", "query": "q", "choices": ["x", "y"], "gold": true}', "'gold' is bool"),
        (
            '{"id": "q1", "query": "q", "choices": ["x", "y"], "gold": 0}',
            "t.jsonl:2: id 'q1' already",
        ),
        ("[1, 2]", "t.jsonl:2: expected a JSON object"),
        ("{not json", "t.jsonl:2: invalid JSON"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "t.jsonl"
    write_jsonl(path, MC_RECORDS[:1])
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(SourceError, match=message):
        mc.read_items(path)
