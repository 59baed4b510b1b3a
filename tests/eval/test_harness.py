"""The lm-evaluation-harness backend (llm/eval/harness.py), fully offline.

The harness runs our tiny model on the local tasks in tests/eval/harness_tasks/ (multiple
choice, rolling perplexity, generation; YAML over JSONL, no download), and every figure it
reports is recomputed here from `Scorer` alone with the harness's definitions
(`lm_eval/api/task.py` `process_results`, `lm_eval/api/metrics.py`):
  acc       = mean over docs of [argmax_i ll_i == gold]
  acc_norm  = mean over docs of [argmax_i ll_i / len(choice_i) == gold]  (characters)
  word_perplexity = exp(-sum ll / sum words), byte_perplexity = exp(-sum ll / sum bytes),
  bits_per_byte = -sum ll / sum bytes / ln 2                              (summed over docs)
  exact_match = mean of [generation == reference]
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from llm.eval.harness import ScorerBackend, harness_results, lm_class, run_harness
from llm.eval.likelihood import Scorer
from tests.data.sft_fixtures import chatml_tokenizer
from tests.eval.test_likelihood import tiny_model

TASKS = Path(__file__).parent / "harness_tasks"
BATCH = 3  # the batch size of tests/eval/test_likelihood.py: the same compiled functions
ALL = ["llm_local_mc", "llm_local_ppl", "llm_local_gen"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    """A copy of the local tasks whose first two generation references are the model's own
    greedy answers (so exact match is 2/4 exactly), the last two answers it cannot give."""
    out = tmp_path_factory.mktemp("tasks") / "harness_tasks"
    shutil.copytree(TASKS, out)
    docs = read_jsonl(out / "gen.jsonl")
    answers = Scorer(tiny_model(), batch_size=BATCH).generate_until(
        [(d["prompt"], ["\n"], 8) for d in docs]
    )
    for i, doc in enumerate(docs):
        doc["references"] = [answers[i] if i < 2 else "never " + answers[i]]
    (out / "gen.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return out


@pytest.fixture(scope="module")
def harness(tasks_dir) -> dict:
    """One harness run of all three tasks (each item once, so the jitted scorer compiles once
    per length bucket for the whole module)."""
    return run_harness(tiny_model(), ALL, tasks_dir, batch_size=BATCH, bootstrap_iters=0)


def test_mc_acc_and_acc_norm_equal_argmax_of_scorer_loglikelihoods(harness):
    docs = read_jsonl(TASKS / "mc.jsonl")
    scorer = Scorer(tiny_model(), batch_size=BATCH)
    acc, acc_norm = [], []
    for doc in docs:
        lls = np.array([s.logprob for s in scorer.loglikelihood(
            [(doc["query"], " " + c) for c in doc["choices"]])])  # fmt: skip
        acc.append(np.argmax(lls) == doc["gold"])
        acc_norm.append(np.argmax(lls / [len(c) for c in doc["choices"]]) == doc["gold"])
    got = harness["results"]["llm_local_mc"]
    assert got["acc,none"] == pytest.approx(np.mean(acc), abs=1e-12)
    assert got["acc_norm,none"] == pytest.approx(np.mean(acc_norm), abs=1e-12)
    assert acc != acc_norm  # this model and task tell the two apart (a real normalisation)
    assert harness["truncated"]["requests"] == scorer.truncated > 0  # long questions, 64 tokens
    assert harness["n-samples"]["llm_local_mc"]["effective"] == len(docs)


def test_rolling_perplexities_equal_scorer_sums(harness):
    texts = [d["text"] for d in read_jsonl(TASKS / "ppl.jsonl")]
    ll = sum(s.logprob for s in Scorer(tiny_model(), batch_size=BATCH).loglikelihood_rolling(texts))
    words = sum(len(re.split(r"\s+", t)) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    got = harness["results"]["llm_local_ppl"]
    assert got["word_perplexity,none"] == pytest.approx(math.exp(-ll / words), rel=1e-9)
    assert got["byte_perplexity,none"] == pytest.approx(math.exp(-ll / n_bytes), rel=1e-9)
    assert got["bits_per_byte,none"] == pytest.approx(-ll / n_bytes / math.log(2), rel=1e-9)


def test_generation_respects_until_and_scores_exact_match(harness, tasks_dir):
    docs = read_jsonl(tasks_dir / "gen.jsonl")
    samples = sorted(harness["samples"]["llm_local_gen"], key=lambda s: s["doc_id"])
    answers = [s["filtered_resps"][0] for s in samples]
    assert answers[:2] == [d["references"][0] for d in docs[:2]]
    assert all("\n" not in a for a in answers)
    assert harness["results"]["llm_local_gen"]["exact_match,none"] == 0.5


def test_registry_and_harness_results_from_a_directory(tmp_path):
    """`model="llm"` with `checkpoint=DIR` (an `llm convert`-style directory) through
    `harness_results`, the entry `llm eval --tasks harness:TASK` uses."""
    from llm.interop.model_dir import save_model

    tok_dir = tmp_path / "tok"
    chatml_tokenizer(tok_dir)
    model = tiny_model()
    save_model(tmp_path / "model", model.config.model, model.params,
               tokenizer_files={"tokenizer.json": tok_dir / "tokenizer.json",
                                "tokenizer_config.json": tok_dir / "tokenizer_config.json"},
               source={"test": "tiny"})  # fmt: skip
    got = run_harness(tmp_path / "model", ["llm_local_mc"], TASKS, limit=4, batch_size=BATCH)
    loaded = lm_class().create_from_arg_string(f"checkpoint={tmp_path / 'model'},batch_size=3")
    docs = read_jsonl(TASKS / "mc.jsonl")[:4]
    requests = [(d["query"], " " + c) for d in docs for c in d["choices"]]
    lls = [s.logprob for s in loaded.scorer.loglikelihood(requests)]
    acc = np.mean([np.argmax(lls[4 * i : 4 * i + 4]) == d["gold"] for i, d in enumerate(docs)])
    assert got["results"]["llm_local_mc"]["acc,none"] == pytest.approx(acc, abs=1e-12)
    summary = harness_results(model, "llm_local_mc", TASKS, shots=None, seed=0, limit=4)
    assert summary["n"] == 4 and set(summary["metrics"]) == {"acc", "acc_norm"}
    assert summary["truncated"] > 0
    assert set(summary["stderr"]) == {"acc", "acc_norm"}


def test_refuses_sampling_unknown_arguments_and_missing_tasks():
    backend = ScorerBackend(model=tiny_model(), batch_size=BATCH)
    assert backend.generation_request("Q:", {"until": "\n", "max_gen_toks": 4}) == ("Q:", ["\n"], 4)
    with pytest.raises(ValueError, match="generates greedily only"):
        backend.generation_request("Q:", {"until": ["\n"], "do_sample": True})
    with pytest.raises(ValueError, match="generates greedily only"):
        backend.generation_request("Q:", {"temperature": 0.7})
    with pytest.raises(ValueError, match=r"generation kwargs \['top_k'\] are not supported"):
        backend.generation_request("Q:", {"top_k": 5})
    with pytest.raises(ValueError, match=r"model_args \['pretrained'\] are not arguments"):
        ScorerBackend(model=tiny_model(), pretrained="gpt2")
    with pytest.raises(ValueError, match="batch_size='auto' must be a positive integer"):
        ScorerBackend(model=tiny_model(), batch_size="auto")
    with pytest.raises(ValueError, match=r"harness tasks \['hellaswag'\] not found in"):
        run_harness(tiny_model(), ["hellaswag"], TASKS)
