"""`llm calibrate` on hand-built results files: its figures are the library's on the same items."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm.cli import main
from llm.eval.calibration import (
    calibration_report,
    expected_calibration_error,
    maximum_calibration_error,
    softmax,
)


def _results(path, probs, gold, task="mc:plays"):
    per_item = {"id": [f"q{i}" for i in range(len(gold))], "gold": [int(g) for g in gold],
                "probs": [list(map(float, p)) for p in probs]}  # fmt: skip
    entry = {"kind": "mc", "n": len(gold), "metrics": {"acc": 0.5}, "per_item": per_item}
    path.write_text(json.dumps({"tasks": {task: entry, "ppl": {"kind": "ppl", "per_item": {}}}}))
    return str(path)


def _overconfident(rng, n):
    """Choice probabilities twice as sharp as the distribution the gold answers come from."""
    logits = rng.normal(size=(n, 4)) * 3
    gold = (rng.random((n, 1)) > np.cumsum(softmax(logits / 2), axis=1)).sum(axis=1)
    return softmax(logits), gold


def _run(capsys, *argv) -> dict:
    assert main(["calibrate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_figures_equal_the_library(tmp_path, capsys):
    probs, gold = _overconfident(np.random.default_rng(0), 500)
    out = _run(capsys, _results(tmp_path / "r.json", probs, gold), "--bins", "10")
    assert out["n"] == 500 and out["zero_probs_clipped"] == 0
    assert out["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == gold))
    assert out["ece"] == pytest.approx(expected_calibration_error(probs, gold, 10), abs=1e-12)
    assert out["mce"] == pytest.approx(maximum_calibration_error(probs, gold, 10), abs=1e-12)
    assert out["nll"] == pytest.approx(-np.mean(np.log(probs[np.arange(500), gold])))


def test_temperature_fitted_on_the_validation_file(tmp_path, capsys):
    rng = np.random.default_rng(1)
    (val_p, val_g), (test_p, test_g) = _overconfident(rng, 2000), _overconfident(rng, 1000)
    val = _results(tmp_path / "val.json", val_p, val_g)
    out = _run(capsys, _results(tmp_path / "test.json", test_p, test_g), "--val", val)
    ref = calibration_report(np.log(val_p), val_g, np.log(test_p), test_g)
    scaled = out["temperature_scaling"]
    assert scaled["temperature"] == pytest.approx(ref.temperature, rel=1e-9)
    assert scaled["temperature"] == pytest.approx(2.0, rel=0.15)  # the sharpening undone
    assert scaled["ece_after"] == pytest.approx(ref.ece_after, abs=1e-12)
    assert scaled["ece_after"] < scaled["ece_before"] / 2
    assert scaled["ece_before"] == out["ece"] and (scaled["n_val"], scaled["n_test"]) == (
        2000,
        1000,
    )


def test_temperature_fitted_on_a_held_out_fraction(tmp_path, capsys):
    probs, gold = _overconfident(np.random.default_rng(2), 1000)
    path = _results(tmp_path / "r.json", probs, gold)
    out = _run(capsys, path, "--val-fraction", "0.3", "--seed", "4")
    order = np.random.default_rng(4).permutation(1000)  # the split the command documents
    val, test = np.sort(order[:300]), np.sort(order[300:])
    ref = calibration_report(np.log(probs[val]), gold[val], np.log(probs[test]), gold[test])
    assert out["temperature_scaling"] == pytest.approx(ref.__dict__, rel=1e-9)
    assert main(["calibrate", path, "--val-fraction", "0.3", "--val", path]) == 2
    assert "not both" in capsys.readouterr().err


def test_ragged_choices_and_plot(tmp_path, capsys):
    probs = [[0.7, 0.3], [0.2, 0.5, 0.3], [0.1, 0.1, 0.1, 0.7], [1.0, 0.0]]
    gold = [0, 2, 3, 1]
    path = _results(tmp_path / "r.json", probs, gold)
    out = _run(capsys, path, "--plot", str(tmp_path / "rd.png"), "--bins", "1")
    # one bin: confidence mean (0.7 + 0.5 + 0.7 + 1) / 4 = 0.725, accuracy 2/4
    assert out["ece"] == pytest.approx(0.225, abs=1e-12)
    assert out["zero_probs_clipped"] == 1
    assert (tmp_path / "rd.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["calibrate", path, "--val", path]) == 2
    assert "same number of choices" in capsys.readouterr().err


def test_bad_results_are_named(tmp_path, capsys):
    path = _results(tmp_path / "r.json", [[0.5, 0.6]], [0])
    assert main(["calibrate", path]) == 2
    assert "item 0" in capsys.readouterr().err
    path = _results(tmp_path / "r.json", [[0.5, 0.5]], [0])
    assert main(["calibrate", path, "--task", "ppl"]) == 2
    assert "no per_item 'probs'" in capsys.readouterr().err
