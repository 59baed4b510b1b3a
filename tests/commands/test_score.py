"""`llm score` (llm/commands/score.py) on segment files prints the reference libraries'
scores: sacrebleu 2.6 for BLEU and chrF, rouge-score 0.1.2 for ROUGE, the SQuAD v1.1 script
(as lm-evaluation-harness carries it) for em and f1; and refuses bad files by name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sacrebleu
from lm_eval.tasks.qasper.metrics import f1_abstractive
from rouge_score import rouge_scorer

from llm.cli import main

HYPS = ["The cat sat on the mat.", "", "Ça va très bien, merci 😀", "It costs $3.14 (1,000)!"]
REFS = [
    ["The cat is on the mat.", "a b", "Ça va bien, merci", "It costs 3.14 dollars (1,000)."],
    ["A cat sat on a mat.", "", "très bien 😀", "costs $3.14"],
]


def _write(tmp_path: Path, name: str, lines: list[str]) -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _score(tmp_path: Path, capsys, *args: str) -> dict:
    hyp = _write(tmp_path, "hyp.txt", HYPS)
    refs = [_write(tmp_path, f"ref{j}.txt", stream) for j, stream in enumerate(REFS)]
    ref_args = [arg for path in refs for arg in ("--ref", path)]
    assert main(["score", *args, "--hyp", hyp, *ref_args]) == 0
    return json.loads(capsys.readouterr().out)


def test_bleu_equals_sacrebleu(tmp_path, capsys):
    result = _score(tmp_path, capsys, "bleu")
    theirs = sacrebleu.corpus_bleu(HYPS, REFS)
    assert result["score"] == pytest.approx(theirs.score, abs=1e-6)
    assert (result["name"], result["n"]) == ("BLEU", len(HYPS))
    assert result["signature"] == "nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp"
    assert (result["sys_len"], result["ref_len"]) == (theirs.sys_len, theirs.ref_len)


def test_chrf_and_chrf_plus_plus_equal_sacrebleu(tmp_path, capsys):
    result = _score(tmp_path, capsys, "chrf", "--lowercase")
    theirs = sacrebleu.CHRF(lowercase=True).corpus_score(HYPS, REFS).score
    assert (result["name"], result["score"]) == ("chrF2", pytest.approx(theirs, abs=1e-6))
    result = _score(tmp_path, capsys, "chrf", "--word-order", "2")
    theirs = sacrebleu.corpus_chrf(HYPS, REFS, word_order=2).score
    assert (result["name"], result["score"]) == ("chrF2++", pytest.approx(theirs, abs=1e-6))


@pytest.mark.parametrize("stem", [False, True])
def test_rouge_equals_rouge_score(tmp_path, capsys, stem):
    types = ["rouge1", "rougeL"]
    result = _score(tmp_path, capsys, "rouge", "--types", ",".join(types),
                    *(["--stem"] if stem else []))  # fmt: skip
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=stem)
    items = [scorer.score_multi([REFS[0][i], REFS[1][i]], h) for i, h in enumerate(HYPS)]
    for name in types:
        expected = sum(item[name].fmeasure for item in items) / len(items)
        assert result[name] == pytest.approx(expected, abs=1e-6)
    assert result["score"] == result["rouge1"]


def test_rouge_newline_token_splits_sentences_for_lsum(tmp_path, capsys):
    hyp = _write(tmp_path, "h.txt", ["the cat sat <n> the dog ran"])
    ref = _write(tmp_path, "r.txt", ["the dog ran <n> a cat sat down"])
    assert main(["score", "rouge", "--types", "rougeLsum", "--newline", "<n>",
                 "--hyp", hyp, "--ref", ref]) == 0  # fmt: skip
    got = json.loads(capsys.readouterr().out)["rougeLsum"]
    scorer = rouge_scorer.RougeScorer(["rougeLsum"])
    expected = scorer.score("the dog ran \n a cat sat down", "the cat sat \n the dog ran")
    assert got == pytest.approx(expected["rougeLsum"].fmeasure, abs=1e-6)


def test_em_and_f1_equal_squad(tmp_path, capsys):
    hyps, refs = ["The Cat", "dog", "a red car"], [["cat", "dog!", "the blue car"]]
    hyp, ref = _write(tmp_path, "h.txt", hyps), _write(tmp_path, "r.txt", refs[0])
    assert main(["score", "em", "--hyp", hyp, "--ref", ref]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(200 / 3)
    assert main(["score", "f1", "--hyp", hyp, "--ref", ref]) == 0
    expected = 100 * sum(f1_abstractive([h], [r]) for h, r in zip(hyps, refs[0], strict=True)) / 3
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(expected, abs=1e-9)


def test_bad_files_are_named(tmp_path, capsys):
    hyp = _write(tmp_path, "h.txt", ["a", "b"])
    short = _write(tmp_path, "short.txt", ["a"])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nbro\xffken\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    rows = [
        (["bleu", "--hyp", hyp, "--ref", short], "short.txt has 1 line but .*h.txt has 2 lines"),
        (["chrf", "--hyp", str(bad), "--ref", hyp], "bad.txt:2: not UTF-8"),
        (["rouge", "--hyp", str(empty), "--ref", hyp], "empty.txt: no lines to score"),
        (["bleu", "--stem", "--hyp", hyp, "--ref", hyp], "--stem does not apply to bleu"),
        (["rouge", "--types", "rouge1,rougeZ", "--hyp", hyp, "--ref", hyp], "'rougeZ'"),
        (["em", "--hyp", str(tmp_path / "missing.txt"), "--ref", hyp], "missing.txt"),
    ]
    for argv, message in rows:
        assert main(["score", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("llm score: error: ") and len(err.splitlines()) == 1, err
        assert re.search(message, err), (message, err)
