"""`llm plot` curves from metrics JSONL; `llm train --dry_run` prints the accounting report."""

import argparse
import json

import pytest

from llm.commands import plot, train


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_read_curves_keeps_the_last_record_of_a_resumed_step(tmp_path):
    _write(
        tmp_path / "metrics.jsonl",
        [
            {"step": 1, "split": "train", "loss": 5.0},
            {"step": 2, "split": "train", "loss": 4.0},
            {"step": 2, "split": "train", "loss": 3.5},  # re-run after resuming from step 1
            {"step": 2, "split": "val", "loss": 3.9, "ppl": 49.4},
        ],
    )
    curves = plot.read_curves(tmp_path / "metrics.jsonl")
    assert curves == {"train": ([1, 2], [5.0, 3.5]), "val": ([2], [3.9])}


def test_bad_line_is_reported_with_its_number(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not JSON"):
        plot.read_curves(tmp_path / "metrics.jsonl")


def test_plot_writes_a_png(tmp_path):
    _write(
        tmp_path / "metrics.jsonl",
        [{"step": s, "split": "train", "loss": 5.0 / s} for s in (1, 2, 3)],
    )
    args = argparse.Namespace(run_dir=str(tmp_path), out=None)
    assert plot.run(args) == 0
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dry_run_prints_the_accounting_report(capsys):
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(["--dry_run", "--devices", "4"])
    assert train.run(args) == 0
    out = capsys.readouterr().out
    assert "mesh (4 devices)" in out and "total per device" in out, out
    # 838,272: the parameter count of configs/default.yaml, from `python train.py --dry_run`
    assert "parameters (total)" in out and "838,272" in out


def test_a_preempted_run_exits_with_the_requeue_status(monkeypatch, tmp_path, capsys):
    """`llm train` returns the status `train()` chose (train.requeue_exit_status on a signal)."""
    import llm.train.loop as loop
    from llm.cli import main

    stopped = {"run_dir": str(tmp_path), "stopped": "SIGTERM", "step": 3, "exit_status": 75}
    monkeypatch.setattr(loop, "train", lambda cfg: stopped)
    assert main(["train", "--config", "configs/tiny.yaml", f"train.run_dir={tmp_path}"]) == 75
    assert "stopped by SIGTERM at step 3" in capsys.readouterr().out
