"""bench/families.py: the width solver hits its target, a quick run writes the table's JSON,
and a family whose switches are refused is listed as not available instead of crashing."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_families", ROOT / "bench" / "families.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


fam = _load_bench()


def test_closest_is_the_nearest_integer_of_an_increasing_function():
    assert fam.closest(lambda k: k * k, 50, 1, 100) == 7  # 49 beats 64
    assert fam.closest(lambda k: k * k, 60, 1, 100) == 8  # 64 beats 49
    assert fam.closest(lambda k: k * k, 10_000_000, 1, 100) == 100  # clipped at hi


@pytest.mark.parametrize(
    ("family", "target"),
    [("transformer", 60_000), ("transformer", 150_000), ("lstm", 90_000), ("moe", 150_000)],
)
def test_solver_hits_the_target_and_no_neighbour_is_closer(tmp_path, family, target):
    f, base = fam.FAMILIES[family], fam.Base(steps=4, batch=8, seq_len=32)
    build = fam.build_config(base, f, tmp_path)
    cfg, count = fam.solve_width(build, f, target)
    assert count == fam.param_count(cfg)
    assert abs(count / target - 1) < 0.03, (family, target, count)
    d, ff = cfg.model.d_model, cfg.model.d_ff
    if f.ff_ratio is None:
        neighbours = [(d - f.d_step, ff), (d + f.d_step, ff)]
    else:
        neighbours = [(d, ff - f.ff_step), (d, ff + f.ff_step)]
    for width in neighbours:  # d_ff is the best at the chosen d_model (d_model alone if none)
        other = fam.param_count(build(f.width(*width)))
        assert abs(count - target) <= abs(other - target), (width, other, count)
    # the shared base reached the config, not just the width
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.seq_len) == (4, 8, 32)


def test_refused_switch_is_listed_not_available(tmp_path, monkeypatch):
    bogus = fam.Family("a family from the future", ("model.no_such_switch=1",), fam.dense)
    monkeypatch.setitem(fam.FAMILIES, "bogus", bogus)
    row = fam.train_row("bogus", fam.Base(steps=2, batch=8, seq_len=32), 20_000, 0.03, tmp_path)
    assert row["status"] == "not available"
    assert "no_such_switch" in row["reason"]
    assert not (tmp_path / "bogus").exists()  # nothing was trained


def test_active_count_of_a_dense_model_is_its_total(tmp_path):
    cfg = fam.build_config(fam.Base(), fam.FAMILIES["transformer"], tmp_path)(())
    assert fam.active_count(cfg) == fam.param_count(cfg)


def test_quick_run_writes_rows_with_every_field(tmp_path):
    out = tmp_path / "families"
    argv = ["--quick", "--families", "transformer,lstm", "--out-dir", str(out)]
    assert fam.main(argv) == 0
    report = json.loads((out / "families.json").read_text())
    quick = fam.QUICK
    assert report["target"] == quick["params"]
    assert report["base"]["steps"] == quick["steps"]
    rows = {r["family"]: r for r in report["rows"]}
    assert set(rows) == {"transformer", "lstm"}
    for r in rows.values():
        assert r["status"] == "ok", r
        assert abs(r["params"] / quick["params"] - 1) < 0.03
        assert r["active_params"] == r["params"]
        assert r["tokens"] == quick["steps"] * quick["batch"] * quick["seq_len"]
        # 3 steps from a random init: near uniform over 259 ids, log2(259) = 8.02 bits/byte
        assert 6.0 < r["bpb"] < 9.0, r
        assert math.isclose(r["bpb"], r["val_loss"] / math.log(2), rel_tol=0.05)
        assert r["tokens_per_s"] > 0 and r["wall_s"] > 0
        assert r["metric"] == fam.CAUSAL
    table = (out / "families.md").read_text()
    assert "decoder Transformer" in table and "LSTM (baseline)" in table


def test_moe_active_count_keeps_top_k_of_the_experts(tmp_path):
    cfg = fam.build_config(fam.Base(), fam.FAMILIES["moe"], tmp_path)(fam.moe(32, 24))
    m = cfg.model
    # per layer, up and down matrices of every expert (gelu_tanh: no gate), D x F each
    experts = m.n_layers * m.n_experts * 2 * m.d_model * m.moe_d_ff
    dropped = experts * (m.n_experts - m.experts_per_token) // m.n_experts
    assert fam.active_count(cfg) == fam.param_count(cfg) - dropped


@pytest.mark.slow  # ~17 s of CPU: a dozen abstract model builds per family, nine families
def test_every_family_is_sized_at_the_documented_target(tmp_path):
    """The table in docs/model.md (100,000 parameters): every family's switches are accepted
    and its nearest width is within the tolerance (a family refused here loses its row)."""
    base = fam.Base(steps=300, batch=16, seq_len=64)
    for name in fam.FAMILIES:
        row, cfg = fam.sized_row(name, base, 100_000, 0.03, tmp_path)
        assert row["status"] == "sized" and cfg is not None, row
        assert abs(row["params"] / 100_000 - 1) <= 0.03, row
