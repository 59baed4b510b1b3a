"""`llm scaling fit|plot|sweep` on sweep results made from a known law."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import matplotlib.image
import pytest

from llm.cli import main
from llm.eval.scaling import ScalingLaw
from llm.eval.sweep import RunResult

LAW = ScalingLaw(E=1.1, A=30.0, B=900.0, alpha=0.3, beta=0.55)  # shaped like our byte ladder
SIZES = {"d32": 24896, "d48": 83616, "d64": 197760, "d96": 444096, "d128": 788736}


def write_results(path: Path, *, mark_held_out: bool = True) -> Path:
    """4 sizes x 3 budgets (the ladder's first three) plus d128_s600, losses exactly on LAW."""
    grid = [(s, steps, False) for s in list(SIZES)[:4] for steps in (100, 200, 400)]
    grid.append(("d128", 600, mark_held_out))
    lines = []
    for size, steps, held in grid:
        n, d = SIZES[size], steps * 2048
        loss = float(LAW.predict(n, d))
        result = RunResult(name=f"{size}_s{steps}", size=size, steps=steps, n_params=n,
                           n_total=n + 10_000, tokens=d, val_loss=loss, train_loss=loss,
                           wall_s=1.0, held_out=held, config_sha256="0" * 64)  # fmt: skip
        lines.append(json.dumps(dataclasses.asdict(result)))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fit_predicts_the_held_out_run(tmp_path, capsys):
    results, out = write_results(tmp_path / "results.jsonl"), tmp_path / "fit.json"
    assert main(["scaling", "fit", "--results", str(results), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held out d128_s600" in printed and "tokens per parameter" in printed
    fit = json.loads(out.read_text())
    assert len(fit["fitted"]) == 12 and "d128_s600" not in fit["fitted"]
    (held,) = fit["held_out"]
    # noiseless data: the fit is exact (tests/eval/test_scaling.py), so is the prediction
    assert held["name"] == "d128_s600"
    assert held["predicted"] == pytest.approx(held["observed"], rel=1e-6)
    for name in ("E", "A", "B", "alpha", "beta"):
        assert fit["law"][name] == pytest.approx(getattr(LAW, name), rel=1e-6)
    opt = fit["compute_optimal"]
    assert opt["flops"] == 6 * SIZES["d128"] * 600 * 2048  # the largest run's compute
    assert 6 * opt["n"] * opt["d"] == pytest.approx(opt["flops"], rel=1e-9)


def test_hold_out_largest_and_by_name(tmp_path):
    results = write_results(tmp_path / "results.jsonl", mark_held_out=False)
    for choice in (["largest"], ["d96_s400"]):
        out = tmp_path / f"{choice[0]}.json"
        args = ["scaling", "fit", "--results", str(results), "--json", str(out), "--hold-out"]
        assert main([*args, *choice]) == 0
        fit = json.loads(out.read_text())
        expected = "d128_s600" if choice == ["largest"] else "d96_s400"
        assert [h["name"] for h in fit["held_out"]] == [expected]
        assert len(fit["fitted"]) == 12


def test_plot_writes_the_png(tmp_path, capsys):
    results, png = write_results(tmp_path / "results.jsonl"), tmp_path / "law.png"
    assert main(["scaling", "plot", "--results", str(results), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(png).shape[:2] == (540, 1440)  # 12 x 4.5 in at 120 dpi
    assert f"wrote {png}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "--hold-out", "d999_s1"], "--hold-out: ['d999_s1'] not in"),
        (["fit", "--hold-out", *[f"d{w}_s{s}" for w in (32, 48, 64) for s in (100, 200, 400)]],
         "4 runs to fit; L(N, D) has 5"),
    ],
)  # fmt: skip
def test_bad_fit_arguments_exit_2(tmp_path, capsys, args, message):
    results = write_results(tmp_path / "results.jsonl")
    assert main(["scaling", args[0], "--results", str(results), *args[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm scaling fit: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_bad_results_and_ladder_exit_2(tmp_path, capsys):
    bad = tmp_path / "results.jsonl"
    bad.write_text('{"name": "x"}\n')
    assert main(["scaling", "fit", "--results", str(bad)]) == 2
    assert f"{bad}:1: a result needs the keys" in capsys.readouterr().err
    ladder = tmp_path / "ladder.yaml"
    ladder.write_text("base: none.yaml\nsizes: {a: {}}\nsteps: [1]\nstep: 3\n")
    assert main(["scaling", "sweep", "--ladder", str(ladder), "--out", str(tmp_path)]) == 2
    assert "unknown keys ['step']" in capsys.readouterr().err
