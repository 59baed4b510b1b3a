"""`llm compare A.json B.json` on results files built by hand (contract 4 of the eval suite)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy import stats

from llm.cli import main
from llm.eval.significance import paired_bootstrap, permutation_test

N = 60
# A task without per-item values (what `llm eval --tasks ppl` writes for the validation split).
PPL = {"kind": "ppl", "n": 2048, "metrics": {"loss": 3.2}, "ci95": {}, "per_item": {}}


def _task(ids, acc, f1=None):
    """A results-file task entry: acc per item (0/1), optional per-item f1, a corpus bleu."""
    if f1 is None:
        kind, metrics = "mc", {"acc": float(np.mean(acc))}
        per_item = {"id": list(ids), "acc": [int(v) for v in acc]}
    else:
        kind, metrics = "gen", {"f1": float(np.mean(f1)), "bleu": 12.5}
        per_item = {"id": list(ids), "f1": [float(v) for v in f1]}
    ci95 = {name: [0.0, 1.0] for name in metrics}
    return {"kind": kind, "n": len(ids), "metrics": metrics, "ci95": ci95,
            "per_item": per_item, "skipped": {}}  # fmt: skip


def _results(path, tasks, model="runs/a"):
    path.write_text(json.dumps({
        "model": {"path": model, "layout": "run", "step": 100, "config_sha256": "c",
                  "params_sha256": model},
        "settings": {"tasks": list(tasks), "shots": 0, "seed": 0, "limit": None,
                     "batch_size": 8},
        "tasks": tasks,
        "llm_version": "0.1.0",
        "created": "2026-12-07T12:00:00+00:00",
    }))  # fmt: skip
    return str(path)


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    return {
        "acc_a": (rng.random(N) < 0.4).astype(int),
        "acc_b": (rng.random(N) < 0.6).astype(int),
        "f1_a": rng.random(N),
        "f1_b": rng.random(N) * 0.8 + 0.2,
    }


@pytest.fixture
def files(tmp_path, scores):
    """A and B on the same items, B listing them in another order; a task only A has."""
    ids = [f"item-{i}" for i in range(N)]
    order = np.random.default_rng(1).permutation(N)
    a = _results(tmp_path / "a.json", {
        "plays": _task(ids, scores["acc_a"]),
        "qa": _task(ids, None, scores["f1_a"]),
        "kjv": _task(ids[:5], scores["acc_a"][:5]),
        "ppl": PPL,
    })  # fmt: skip
    b = _results(tmp_path / "b.json", {
        "plays": _task([ids[i] for i in order], scores["acc_b"][order]),
        "qa": _task([ids[i] for i in order], None, scores["f1_b"][order]),
        "ppl": PPL,
    }, model="runs/b")  # fmt: skip
    return a, b


def _run_json(capsys, *argv) -> dict:
    assert main(["compare", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_pairs_items_by_id_and_reports_paired_tests(files, scores, capsys):
    out = _run_json(capsys, *files, "--resamples", "2000", "--seed", "3")
    rows = {(r["task"], r["metric"]): r for r in out["rows"]}
    assert set(rows) == {("plays", "acc"), ("qa", "f1")}
    acc = rows["plays", "acc"]
    ref = paired_bootstrap(scores["acc_a"], scores["acc_b"], n_resamples=2000, seed=3)
    assert acc["n"] == N and acc["diff"] == pytest.approx(ref.diff)
    assert (acc["mean_a"], acc["mean_b"]) == pytest.approx((ref.mean_a, ref.mean_b))
    assert acc["ci"] == pytest.approx(list(ref.ci)) and acc["p_bootstrap"] == ref.p_value
    only_a = int(np.sum((scores["acc_a"] == 1) & (scores["acc_b"] == 0)))
    only_b = int(np.sum((scores["acc_a"] == 0) & (scores["acc_b"] == 1)))
    assert (acc["mcnemar"]["only_a"], acc["mcnemar"]["only_b"]) == (only_a, only_b)
    assert acc["mcnemar"]["p_value"] == pytest.approx(
        stats.binomtest(only_a, only_a + only_b).pvalue, rel=1e-9
    )
    f1 = rows["qa", "f1"]
    assert f1["mcnemar"] is None  # not a 0/1 metric
    assert f1["diff"] == pytest.approx(np.mean(scores["f1_b"] - scores["f1_a"]))
    assert f1["p_permutation"] == permutation_test(
        scores["f1_a"], scores["f1_b"], n_resamples=2000, seed=3
    )
    # nothing is dropped silently: the task only A has and the corpus-level BLEU are listed
    assert any("'kjv'" in line and "only in" in line for line in out["not_compared"])
    assert any("'bleu'" in line for line in out["not_compared"])
    assert any("'ppl': no per-item ids" in line for line in out["not_compared"])


def test_different_items_are_an_error_unless_allowed(tmp_path, scores, capsys):
    ids = [f"q{i}" for i in range(N)]
    a = _results(tmp_path / "a.json", {"plays": _task(ids, scores["acc_a"])})
    b = _results(tmp_path / "b.json", {"plays": _task([*ids[3:], "extra"],
                                                      [*scores["acc_b"][3:], 1])})  # fmt: skip
    assert main(["compare", a, b]) == 2
    err = capsys.readouterr().err
    assert "3 items of" in err and "1 items of" in err and "'q0'" in err
    assert "--allow-subset" in err and err.count("\n") == 1
    out = _run_json(capsys, a, b, "--allow-subset", "--resamples", "500")
    assert out["rows"][0]["n"] == N - 3
    assert (out["only_a"], out["only_b"]) == ({"plays": 3}, {"plays": 1})
    ref = paired_bootstrap(scores["acc_a"][3:], scores["acc_b"][3:], n_resamples=500)
    assert out["rows"][0]["ci"] == pytest.approx(list(ref.ci))


def test_table_names_both_files_and_every_row(files, capsys):
    assert main(["compare", *files, "--resamples", "500", "--task", "plays"]) == 0
    out = capsys.readouterr().out
    assert files[0] in out and files[1] in out
    (row,) = [line for line in out.splitlines() if line.startswith("plays")]
    assert row.split()[:3] == ["plays", "acc", str(N)]
    assert "qa " not in out  # --task restricted the comparison


def test_metric_filter(files, capsys):
    out = _run_json(capsys, *files, "--metric", "f1", "--resamples", "200")
    assert [(r["task"], r["metric"]) for r in out["rows"]] == [("qa", "f1")]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t["plays"]["per_item"]["id"].__setitem__(1, "item-0"),
         "item id 'item-0' appears twice"),
        (lambda t: t["plays"]["per_item"]["acc"].__setitem__(4, None),
         r"per_item\['acc'\]\[4\] = None is not a finite number"),
        (lambda t: t["plays"]["per_item"]["acc"].pop(), "has 59 values for 60 ids"),
        (lambda t: t["plays"]["per_item"].pop("id"), "no per-item ids in"),
        (lambda t: t["plays"]["per_item"].__setitem__("id", "q1"), "no per_item ids"),
    ],
)  # fmt: skip
def test_bad_results_files_name_the_file_and_place(files, edit, message, capsys):
    data = json.loads(open(files[1]).read())
    edit(data["tasks"])
    with open(files[1], "w") as f:
        json.dump(data, f)
    assert main(["compare", *files, "--task", "plays"]) == 2
    err = capsys.readouterr().err
    assert files[1] in err
    assert re.search(message, err)


def test_bad_arguments(files, tmp_path, capsys):
    assert main(["compare", *files, "--task", "nope"]) == 2
    assert "'nope' is not in both files" in capsys.readouterr().err
    assert main(["compare", *files, "--metric", "nope"]) == 2
    assert "nothing to compare" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("{\n  not json")
    assert main(["compare", files[0], str(tmp_path / "junk.json")]) == 2
    assert "junk.json:2: not JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", *files, "--level", "95"])
