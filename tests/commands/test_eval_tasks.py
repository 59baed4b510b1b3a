"""`llm eval --tasks` end to end on a tiny `llm convert`-style model: the table, the results
JSON (contract 4 of the evaluation suite), and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llm.cli import main
from tests.eval.runner_fixtures import (
    GEN_RECORDS,
    MC_RECORDS,
    PPL_RECORDS,
    tiny_model,
    write_jsonl,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The tiny model saved as `llm convert` writes one: config.yaml + params/."""
    import orbax.checkpoint as ocp

    from llm.config import save_config

    model = tiny_model()
    out = tmp_path_factory.mktemp("model") / "tiny"
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / "params", model.params)
    checkpointer.wait_until_finished()
    save_config(model.config, out / "config.yaml")
    return out


@pytest.fixture
def tasks(tmp_path) -> dict[str, Path]:
    return {
        "mc": write_jsonl(tmp_path / "which" / "test.jsonl", MC_RECORDS),
        "gen": write_jsonl(tmp_path / "qa.jsonl", GEN_RECORDS),
        "ppl": write_jsonl(tmp_path / "docs.jsonl", PPL_RECORDS),
    }


def test_tasks_end_to_end(model_dir, tasks, tmp_path, capsys):
    from llm.eval.results import config_sha256, params_sha256

    out = tmp_path / "results.json"
    spec = f"mc:{tasks['mc'].parent},gen:{tasks['gen']},ppl:{tasks['ppl']}"
    argv = ["eval", "--checkpoint", str(model_dir), "--tasks", spec, "--shots", "1",
            "--limit", "4", "--max-new-tokens", "4", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert list(doc["tasks"]) == ["mc:which", "gen:qa", "ppl:docs"]
    model = tiny_model()
    assert doc["model"] == {"path": str(model_dir), "layout": "imported", "step": 0,
                            "config_sha256": config_sha256(model.config),
                            "params_sha256": params_sha256(model.params)}  # fmt: skip
    assert doc["settings"]["tasks"] == spec.split(",")
    assert {k: doc["settings"][k] for k in ("shots", "seed", "limit", "batch_size")} == {
        "shots": 1, "seed": 0, "limit": 4, "batch_size": 8}  # fmt: skip
    mc = doc["tasks"]["mc:which"]
    assert (mc["kind"], mc["n"], mc["skipped"]) == ("mc", 4, {"beyond --limit": 1})
    assert len(mc["per_item"]["acc"]) == 4 and len(mc["ci95"]["acc"]) == 2
    assert doc["tasks"]["gen:qa"]["n"] == 3 and doc["tasks"]["ppl:docs"]["n"] == 3
    rows = [line.split() for line in table.splitlines()]
    assert ["mc:which", "acc", f"{mc['metrics']['acc']:.4f}"] == rows[1][:3]
    assert any(r[:2] == ["ppl:docs", "bits_per_byte"] for r in rows)
    # default --out: a new file inside the model directory
    again = main(["eval", "--checkpoint", str(model_dir), "--tasks", f"mc:{tasks['mc']}",
                  "--limit", "1"])  # fmt: skip
    assert again == 0 and len(list((model_dir / "eval").glob("results-*.json"))) == 1


# (id, extra argv with {tmp} and {mc}, text the one error line must hold)
ROWS = [
    ("unknown kind", ["--tasks", "mmlu"], "unknown task kind 'mmlu'"),
    ("missing file", ["--tasks", "mc:{tmp}/none.jsonl"], "none.jsonl does not exist"),
    ("bad record", ["--tasks", "mc:{tmp}/bad.jsonl"], "bad.jsonl:2: record is missing key"),
    ("out exists", ["--tasks", "mc:{mc}", "--out", "{mc}"], "exists; results are never"),
    ("flag without tasks", ["--shots", "2"], "--shots only apply with --tasks"),
    ("data with tasks", ["--tasks", "mc:{mc}", "--data", "milton"], "--data is the corpora"),
    ("fewshot without shots", ["--tasks", "mc:{mc}", "--fewshot-file", "{mc}"],
     "--fewshot-file needs --shots"),
    ("too many shots", ["--tasks", "mc:{mc}", "--shots", "9"],
     "9 shots asked for, but the few-shot pool has 4"),
    ("limit and sample", ["--tasks", "mc:{mc}", "--limit", "2", "--sample", "2"],
     "--limit and --sample both choose the items"),
    ("sample of a harness task", ["--tasks", "harness:x", "--sample", "2"],
     "--sample applies to mc, gen and ppl:SOURCE tasks"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_with_exit_2(model_dir, tasks, tmp_path, capsys, argv, message):
    (tmp_path / "bad.jsonl").write_text(json.dumps(MC_RECORDS[0]) + '\n{"id": "x"}\n')
    argv = [a.format(tmp=tmp_path, mc=tasks["mc"]) for a in argv]
    assert main(["eval", "--checkpoint", str(model_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("llm eval: error: "), err
    assert message in err


def test_eval_py_reports_a_bad_spec_in_one_line(model_dir):
    run = subprocess.run([sys.executable, "eval.py", "--checkpoint", str(model_dir), "--tasks",
                          "mc"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 2 and run.stderr == "llm eval: error: --tasks 'mc': give mc:PATH\n"
