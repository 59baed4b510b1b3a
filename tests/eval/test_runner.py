"""The task runner (llm/eval/runner.py) on a tiny model: specs, mc, gen and ppl tasks.

References: perplexity figures equal lm-evaluation-harness's own aggregations
(`lm_eval.api.metrics.weighted_perplexity` and `bits_per_byte` over (ll, count) pairs, with
its `count_words`); BLEU / chrF of answers with uneven reference counts equal sacrebleu given
`None` for the missing references; ECE equals the binned formula written out here.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from llm.eval import runner
from llm.eval.likelihood import Scorer
from llm.eval.runner import Settings, load_tasks, parse_tasks, run_tasks
from tests.eval.runner_fixtures import (
    GEN_RECORDS,
    MC_RECORDS,
    PPL_RECORDS,
    tiny_model,
    write_jsonl,
)


def test_spec_grammar_and_names(tmp_path):
    mc_file = write_jsonl(tmp_path / "which_play.jsonl", MC_RECORDS)
    task_dir = tmp_path / "which_book"
    write_jsonl(task_dir / "test.jsonl", MC_RECORDS)
    specs = parse_tasks(f"ppl, mc:{mc_file},mc:{task_dir},ppl:milton,harness:arc_easy")
    assert [(s.kind, s.name) for s in specs] == [
        ("ppl", "ppl"), ("mc", "mc:which_play"), ("mc", "mc:which_book"),
        ("ppl", "ppl:milton"), ("harness", "harness:arc_easy"),
    ]  # fmt: skip
    assert specs[1].spec == f"mc:{mc_file}" and specs[0].arg is None
    assert parse_tasks(f"mc:{task_dir / 'test.jsonl'}")[0].name == "mc:which_book"
    assert runner.mc_files(str(task_dir), None) == (str(task_dir / "test.jsonl"), None)
    write_jsonl(task_dir / "fewshot.jsonl", MC_RECORDS)
    assert runner.mc_files(str(task_dir), None)[1] == str(task_dir / "fewshot.jsonl")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no task given"),
        ("mmlu", "unknown task kind 'mmlu'"),
        ("mc", "give mc:PATH"),
        ("gen:", "nothing after gen:"),
        ("mc:{tmp}/none.jsonl", "none.jsonl does not exist"),
        ("mc:{tmp}/a.jsonl,mc:{tmp}/sub/a.jsonl", "both be named 'mc:a'"),
        ("ppl,ppl:{tmp}/ood.jsonl", "both be named 'ppl:ood'"),  # the bare ppl writes ppl:ood
    ],
)
def test_bad_specs(tmp_path, text, message):
    write_jsonl(tmp_path / "a.jsonl", MC_RECORDS)
    write_jsonl(tmp_path / "ood.jsonl", PPL_RECORDS)
    write_jsonl(tmp_path / "sub" / "a.jsonl", MC_RECORDS)
    with pytest.raises(ValueError, match=message):
        parse_tasks(text.format(tmp=tmp_path))


def _ece(conf, correct, n_bins=15):
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = [(c, k) for c, k in zip(conf, correct, strict=True) if lo < c <= hi]
        if inside:
            gap = np.mean([k for _, k in inside]) - np.mean([c for c, _ in inside])
            total += len(inside) / len(conf) * abs(gap)
    return total


def test_mc_task(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", MC_RECORDS)
    s = Settings(limit=4, seed=1)
    got = run_tasks(tiny_model(), load_tasks(parse_tasks(f"mc:{path}"), s), s)["mc:t"]
    assert got.n == 4 and got.skipped == {"beyond --limit": 1}
    assert got.per_item["id"] == ["q1", "q2", "q3", "q4"]
    for name in ("acc", "acc_norm"):
        mean = np.mean(got.per_item[name])
        assert got.metrics[name] == mean
        lo, hi = got.ci95[name]
        assert lo <= mean <= hi
    conf = [max(p) for p in got.per_item["probs"]]
    assert got.metrics["ece"] == pytest.approx(_ece(conf, got.per_item["acc"]), abs=1e-12)
    assert got.per_item["pred"] == [int(np.argmax(p)) for p in got.per_item["probs"]]
    for p, ll in zip(got.per_item["probs"], got.per_item["lls"], strict=True):
        np.testing.assert_allclose(p, np.exp(ll) / np.sum(np.exp(ll)), rtol=1e-9)
    assert {k: v["n"] for k, v in got.domains.items()} == {"bible": 1, "plays": 2, "poets": 1}
    plays = [a for a, r in zip(got.per_item["acc"], MC_RECORDS, strict=False)
             if r["domain"] == "plays"]  # fmt: skip
    assert got.domains["plays"]["metrics"]["acc"] == np.mean(plays)


def test_ppl_task_equals_the_harness_aggregations(tmp_path):
    from lm_eval.api.metrics import bits_per_byte, weighted_perplexity
    from lm_eval.api.task import ConfigurableTask

    path = write_jsonl(tmp_path / "docs.jsonl", PPL_RECORDS)
    model = tiny_model()
    got = run_tasks(model, load_tasks(parse_tasks(f"ppl:{path}"), Settings()), Settings())
    got = got["ppl:docs"]
    texts = [r["text"] for r in PPL_RECORDS]
    scored = Scorer(model).loglikelihood_rolling(texts)
    lls = [s.logprob for s in scored]
    np.testing.assert_allclose(got.per_item["logprob"], lls, rtol=1e-6)

    def figures(index):
        words = [(lls[i], ConfigurableTask.count_words(texts[i])) for i in index]
        n_bytes = [(lls[i], ConfigurableTask.count_bytes(texts[i])) for i in index]
        tokens = [(lls[i], scored[i].n_tokens) for i in index]
        return {"word_perplexity": weighted_perplexity(words),
                "byte_perplexity": weighted_perplexity(n_bytes),
                "bits_per_byte": bits_per_byte(n_bytes),
                "token_perplexity": weighted_perplexity(tokens)}  # fmt: skip

    for name, value in figures([0, 1, 2]).items():
        assert got.metrics[name] == pytest.approx(value, rel=1e-6), name
        lo, hi = got.ci95[name]
        assert lo <= got.metrics[name] * (1 + 1e-9) and got.metrics[name] <= hi * (1 + 1e-9)
    for name, value in figures([0, 2]).items():
        assert got.domains["plays"]["metrics"][name] == pytest.approx(value, rel=1e-6), name
    # the harness counts the empty strings that leading and trailing whitespace split off
    assert got.per_item["words"][2] == len(texts[2].split()) + 2
    assert got.per_item["tokens"][2] > 64  # longer than max_len: several rolling windows


def test_gen_task_scores_the_greedy_answers(tmp_path):
    import sacrebleu

    from llm.eval.overlap import exact_match, token_f1

    path = write_jsonl(tmp_path / "qa.jsonl", GEN_RECORDS)
    model = tiny_model()
    s = Settings(max_new_tokens=8)
    got = run_tasks(model, load_tasks(parse_tasks(f"gen:{path}"), s), s)["gen:qa"]
    requests = [(r["prompt"], r.get("until", ["\n\n"]), 8) for r in GEN_RECORDS]
    answers = Scorer(model).generate_until(requests)
    assert got.per_item["answer"] == answers
    refs = [r["references"] for r in GEN_RECORDS]
    pairs = list(zip(answers, refs, strict=True))
    assert got.per_item["exact_match"] == [exact_match(a, r) for a, r in pairs]
    assert got.per_item["f1"] == [token_f1(a, r) for a, r in pairs]
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(2)]
    assert got.metrics["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(answers, streams).score, abs=1e-6
    )
    assert got.metrics["chrf"] == pytest.approx(
        sacrebleu.corpus_chrf(answers, streams).score, abs=1e-6
    )
    assert set(got.ci95) == {"exact_match", "f1", "rougeL"}
    assert all(math.isfinite(v) for v in got.metrics.values())


def test_uneven_references_equal_sacrebleu_with_missing_ones(tmp_path):
    """Filling a short reference list with its first reference leaves BLEU and chrF as
    sacrebleu computes them with `None` (no reference) in the short streams."""
    import sacrebleu

    from llm.eval import generative

    items = generative.read_items(str(write_jsonl(tmp_path / "qa.jsonl", GEN_RECORDS)))
    answers = ["Macbeth is a play", "William Shakespeare", "to be, or not"]
    values, corpus = generative.score(items, answers)
    refs = [r["references"] for r in GEN_RECORDS]
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(2)]
    bleu = sacrebleu.corpus_bleu(answers, streams).score
    assert bleu > 10 and corpus["bleu"] == pytest.approx(bleu, abs=1e-6)
    assert corpus["chrf"] == pytest.approx(sacrebleu.corpus_chrf(answers, streams).score, abs=1e-6)
    assert values["exact_match"].tolist() == [0.0, 0.0, 0.0]
    # SQuAD normalisation drops the article: "macbeth is play" vs "macbeth": P 1/3, R 1
    assert values["f1"][0] == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))


def test_ppl_of_a_corpus_scores_its_validation_split(tmp_path):
    """A corpus path (not .jsonl) is read as training data is, and its validation split (the
    model config's val_fraction and seed) is scored."""
    from llm.data import prepare_documents, split_documents

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for k, line in enumerate(["Now is the winter of our discontent", "Of Man's first disobedience",
                              "In the beginning God created the heaven"]):  # fmt: skip
        (corpus / f"doc{k}.txt").write_text(f"{line}, document {k}. " * 6)
    model = tiny_model()
    got = run_tasks(model, load_tasks(parse_tasks(f"ppl:{corpus}"), Settings()), Settings())
    got = got["ppl:corpus"]
    docs, _ = prepare_documents(model.config.data, str(corpus))
    val = split_documents(docs, model.config.data.val_fraction, model.config.data.seed)
    assert got.per_item["id"] == [d.origin for d in val["validation"]] and got.n == 1
    (expected,) = Scorer(model).loglikelihood_rolling([val["validation"][0].text])
    assert got.per_item["logprob"] == pytest.approx([expected.logprob], rel=1e-6)
    assert got.domains == {}


def test_sample_is_seeded_in_file_order_and_counts_the_rest():
    items = [f"item{i}" for i in range(50)]
    got, skipped = runner.selected(items, Settings(sample=10, seed=3))
    # the documented draw: numpy default_rng(seed).choice without replacement, sorted
    want = np.sort(np.random.default_rng(3).choice(50, 10, replace=False))
    assert got == [items[i] for i in want] and skipped == {"not in --sample": 40}
    assert runner.selected(items, Settings(sample=10, seed=3))[0] == got  # same in every run
    assert runner.selected(items, Settings(sample=10, seed=4))[0] != got
    assert runner.selected(items, Settings(sample=50)) == (items, {})  # all of them: no skip
    assert runner.selected(items, Settings(limit=5)) == (items[:5], {"beyond --limit": 45})


def test_a_pool_sharing_an_item_id_is_counted_without_it(tmp_path):
    """Each item's shots exclude the item itself (by id), so a 4-item pool that holds one of the
    task's ids gives that item only 3: 4 shots are refused before any model loads."""
    path = write_jsonl(tmp_path / "t.jsonl", MC_RECORDS[:1])
    pool = write_jsonl(tmp_path / "pool.jsonl", MC_RECORDS[:4])
    with pytest.raises(ValueError, match="4 shots asked for, but the few-shot pool has 3"):
        load_tasks(parse_tasks(f"mc:{path}"), Settings(shots=4, fewshot_file=str(pool)))
    load_tasks(parse_tasks(f"mc:{path}"), Settings(shots=3, fewshot_file=str(pool)))


def test_gen_task_counts_prompts_cut_to_fit(tmp_path):
    long = {"id": "long", "prompt": "word " * 40, "references": ["x"]}  # 200 bytes > 64 - 8
    path = write_jsonl(tmp_path / "qa.jsonl", [*GEN_RECORDS, long])
    s = Settings(max_new_tokens=8)
    got = run_tasks(tiny_model(), load_tasks(parse_tasks(f"gen:{path}"), s), s)["gen:qa"]
    assert got.truncated == 1


def test_an_encoder_is_refused_by_name(tmp_path):
    """model.causal=false sees the continuation it would score: no task runs on it."""
    m = tiny_model()
    cfg = dataclasses.replace(m.config, model=dataclasses.replace(m.config.model, causal=False))
    path = write_jsonl(tmp_path / "t.jsonl", MC_RECORDS)
    s = Settings()
    with pytest.raises(ValueError, match="causal=false is a bidirectional encoder"):
        run_tasks(dataclasses.replace(m, config=cfg), load_tasks(parse_tasks(f"mc:{path}"), s), s)
