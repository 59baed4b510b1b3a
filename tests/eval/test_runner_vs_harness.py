"""Our multiple-choice runner gives the same acc and acc_norm as lm-evaluation-harness itself
(`lm_eval.simple_evaluate` with our `LM`, llm/eval/harness.py) on the same local task, items
and model: item by item and in aggregate. The task is tests/eval/harness_tasks/llm_local_mc.yaml
over mc.jsonl, which is also a valid `mc:` task file for our runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm.eval.runner import Settings, load_tasks, parse_tasks, run_tasks
from tests.eval.runner_fixtures import tiny_model

TASKS = Path(__file__).parent / "harness_tasks"


def test_runner_equals_the_harness_on_the_same_task():
    from llm.eval.harness import run_harness

    model = tiny_model()
    settings = Settings(include_path=str(TASKS))
    specs = parse_tasks(f"mc:{TASKS / 'mc.jsonl'},harness:llm_local_mc")
    ours = run_tasks(model, load_tasks(specs, settings), settings)
    mine, via_runner = ours["mc:mc"], ours["harness:llm_local_mc"]

    out = run_harness(model, ["llm_local_mc"], include_path=TASKS, num_fewshot=0)
    samples = sorted(out["samples"]["llm_local_mc"], key=lambda s: s["doc_id"])
    assert [s["doc"]["id"] for s in samples] == mine.per_item["id"]
    assert [s["acc"] for s in samples] == mine.per_item["acc"]
    assert [s["acc_norm"] for s in samples] == mine.per_item["acc_norm"]
    harness = out["results"]["llm_local_mc"]
    assert mine.metrics["acc"] == harness["acc,none"]
    assert mine.metrics["acc_norm"] == harness["acc_norm,none"]
    assert mine.per_item["acc"] != mine.per_item["acc_norm"]  # the two rules differ here
    assert 0 < mine.metrics["acc"] < 1  # neither all right nor all wrong
    assert via_runner.n == mine.n == 12
    assert {k: via_runner.metrics[k] for k in ("acc", "acc_norm")} == {
        "acc": mine.metrics["acc"], "acc_norm": mine.metrics["acc_norm"]}  # fmt: skip


def test_harness_tasks_count_limit_skips_and_keep_the_tasks_shots(tmp_path):
    """--limit's left-out items are counted; no --shots means the YAML's own num_fewshot."""
    import shutil

    for name in ("local_data.py", "mc.jsonl"):
        shutil.copy(TASKS / name, tmp_path / name)
    yaml_text = (TASKS / "llm_local_mc.yaml").read_text()
    (tmp_path / "two_shot.yaml").write_text(
        yaml_text.replace("task: llm_local_mc", "task: llm_two_shot") + "num_fewshot: 2\n"
    )
    (tmp_path / "group.yaml").write_text("group: llm_group\ntask:\n  - llm_two_shot\n")
    model = tiny_model()
    settings = Settings(include_path=str(tmp_path), limit=3)
    got = run_tasks(model, load_tasks(parse_tasks("harness:llm_two_shot"), settings), settings)
    result = got["harness:llm_two_shot"]
    assert (result.n, result.skipped) == (3, {"beyond --limit": 9})

    from llm.eval.harness import run_harness

    own = run_harness(model, ["llm_two_shot"], include_path=tmp_path, limit=3)
    assert own["configs"]["llm_two_shot"]["num_fewshot"] == 2  # what the runner left alone
    assert {k: result.metrics[k] for k in ("acc", "acc_norm")} == {
        "acc": own["results"]["llm_two_shot"]["acc,none"],
        "acc_norm": own["results"]["llm_two_shot"]["acc_norm,none"]}  # fmt: skip
    with pytest.raises(ValueError, match=r"\['llm_group'\] are groups or tags"):
        run_harness(model, ["llm_group"], include_path=tmp_path)
