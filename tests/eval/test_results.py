"""The results JSON of `llm eval --tasks` (llm/eval/results.py): schema, hashes, no overwrite."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json

import jax.numpy as jnp
import numpy as np
import pytest

from llm.config import load_config
from llm.eval import results as res


def _params():
    return {"layer": {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3)},
            "embed": jnp.ones((4,), jnp.bfloat16)}  # fmt: skip


def test_params_hash_is_a_function_of_paths_dtypes_shapes_and_bytes():
    base = res.params_sha256(_params())
    assert res.params_sha256(_params()) == base  # same params, same hash
    changed = _params()
    changed["layer"]["w"] = changed["layer"]["w"].at[1, 2].add(1e-3)
    assert res.params_sha256(changed) != base  # one value
    reshaped = _params()
    reshaped["layer"]["w"] = reshaped["layer"]["w"].reshape(3, 2)
    assert res.params_sha256(reshaped) != base  # same bytes, other shape
    recast = _params()
    recast["embed"] = jnp.ones((2,), jnp.float32)  # 8 bytes either way
    assert res.params_sha256(recast) != base
    renamed = {"layer": {"v": _params()["layer"]["w"]}, "embed": _params()["embed"]}
    assert res.params_sha256(renamed) != base  # same leaves under another path


def test_params_hash_golden():
    """The definition spelled out with hashlib: leaves in sorted-key order ("embed" first)."""
    digest = hashlib.sha256()
    digest.update(b"['embed']|bfloat16|(4,)\n" + np.ones(4, jnp.bfloat16).tobytes())
    digest.update(b"['layer']['w']|float32|(2, 3)\n" + np.arange(6, dtype=np.float32).tobytes())
    assert res.params_sha256(_params()) == digest.hexdigest()


def test_config_hash_follows_the_config():
    cfg = load_config(None, [])
    assert res.config_sha256(cfg) == res.config_sha256(load_config(None, []))
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_layers=3))
    assert res.config_sha256(other) != res.config_sha256(cfg)


def _task() -> res.TaskResult:
    return res.TaskResult(
        "mc", 3, {"acc": 2 / 3}, {"acc": (0.0, 1.0)}, {"id": ["a", "b", "c"], "acc": [1, 0, 1]},
        {"beyond --limit": 4}, {"x": {"n": 3, "metrics": {"acc": 2 / 3}}},
    )  # fmt: skip


def test_results_json_has_the_contract_keys(tmp_path):
    model = {"path": "m", "layout": "run", "step": 5, "config_sha256": "c", "params_sha256": "p"}
    settings = {"tasks": ["mc:x.jsonl"], "shots": 0, "seed": 0, "limit": 3, "batch_size": 8}
    doc = res.results_json(model, settings, {"mc:x": _task()})
    path = res.write_results(doc, tmp_path / "r.json")
    back = json.loads(path.read_text())
    assert set(back) == {"model", "settings", "tasks", "llm_version", "created"}
    task = back["tasks"]["mc:x"]
    assert set(task) == {"kind", "n", "metrics", "ci95", "per_item", "skipped", "domains"}
    assert task["ci95"] == {"acc": [0.0, 1.0]} and task["per_item"]["acc"] == [1, 0, 1]
    assert datetime.datetime.fromisoformat(back["created"]).tzinfo is not None
    with pytest.raises(FileExistsError):
        res.write_results(doc, path)  # never overwritten
    assert json.loads(path.read_text()) == back


def test_per_item_lists_must_match_n():
    with pytest.raises(ValueError, match=r"per_item\['acc'\] has 2 values for n=3"):
        res.TaskResult("mc", 3, {}, {}, {"id": ["a", "b", "c"], "acc": [1, 0]})
    with pytest.raises(ValueError, match="task kind 'xx'"):
        res.TaskResult("xx", 0, {}, {}, {})


def test_default_path_never_reuses_a_name(tmp_path):
    now = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    first = res.default_path(tmp_path, now)
    assert first == tmp_path / "eval" / "results-20260102T030405Z.json"
    res.write_results({}, first)
    assert res.default_path(tmp_path, now).name == "results-20260102T030405Z-2.json"


def test_table_rows():
    table = res.format_table({"mc:x": _task()}).splitlines()
    assert table[0].split() == ["task", "metric", "value", "95%", "CI", "n"]
    assert table[1].split() == ["mc:x", "acc", "0.6667", "[0.0000,", "1.0000]", "3"]
    assert table[2].split() == ["mc:x/x", "acc", "0.6667", "3"]
    assert "skipped: beyond --limit" in table[3] and table[3].split()[-1] == "4"
    many = {f"d{k}": {"n": 1, "metrics": {"acc": 1.0}} for k in range(res.MAX_DOMAIN_ROWS + 1)}
    task = dataclasses.replace(_task(), domains=many, truncated=2)
    table = res.format_table({"mc:x": task}).splitlines()
    assert table[2].split() == ["mc:x", str(len(many)), "domains", "in", "the", "results", "JSON"]
    assert table[3].startswith("mc:x  skipped: beyond --limit")
    assert table[4].split() == ["mc:x", "requests", "truncated", "2"]
