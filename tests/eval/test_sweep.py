"""The scaling ladder (llm/eval/sweep.py): parsing, per-run configs, the resumable sweep."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from llm.config import ConfigError
from llm.eval.sweep import RESULTS, config_sha256, load_ladder, read_results, run_sweep
from llm.model.accounting import param_counts

BASE = {
    "model": {"vocab_size": 259, "n_heads": 2, "max_seq_len": 32, "pos_encoding": "rope"},
    "train": {"batch_size": 8, "seq_len": 32, "log_every": 1, "eval_every": 0,
              "progress_bar": False, "tensorboard": False, "peak_flops": 1e11},
    "optim": {"lr": 3e-3},
    "eval": {"batches": 2},
}  # fmt: skip
MICRO = {
    "base": "base.yaml",
    "warmup_fraction": 0.25,
    "overrides": {"train.ckpt_every": 2},
    "sizes": {
        "l1": {"model.d_model": 16, "model.d_ff": 32, "model.n_layers": 1},
        "l2": {"model.d_model": 16, "model.d_ff": 32, "model.n_layers": 2},
    },
    "steps": [2, 4],
}


def write_ladder(tmp_path: Path, corpus: Path | None = None, **changes) -> Path:
    base = {**BASE, "data": {"corpus": str(corpus or tmp_path / "corpus"), "eval_corpus": None}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    path = tmp_path / "ladder.yaml"
    path.write_text(yaml.safe_dump({**MICRO, **changes}))
    return path


def write_corpus(directory: Path, n_docs: int = 12) -> Path:
    """Distinct documents (no near-duplicates for dedup to drop), each well over 100 chars."""
    directory.mkdir(parents=True, exist_ok=True)
    words = "king queen sword crown night storm river castle letter ghost honour wine".split()
    for i in range(n_docs):
        text = " ".join(f"{words[(i * 7 + j * j) % len(words)]}{j % (i + 3)}" for j in range(300))
        (directory / f"doc{i:02d}.txt").write_text(text + "\n")
    return directory


def test_ladder_runs_and_configs(tmp_path):
    ladder = load_ladder(write_ladder(tmp_path, held_out=[{"size": "big", "steps": 8}],
                                      held_out_sizes={"big": {"model.d_model": 32}}))  # fmt: skip
    rungs = ladder.rungs()
    assert [r.name for r in rungs] == ["l1_s2", "l1_s4", "l2_s2", "l2_s4", "big_s8"]
    assert [r.held_out for r in rungs] == [False] * 4 + [True]
    cfg = ladder.config(rungs[3], tmp_path / "out")
    # each run's own schedule: cosine over its own steps, warmup a fraction of them
    assert (cfg.train.steps, cfg.optim.warmup_steps, cfg.optim.schedule) == (4, 1, "cosine")
    assert cfg.train.run_dir == str(tmp_path / "out" / "l2_s4")
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.train.ckpt_every) == (2, 16, 2)
    big = ladder.config(rungs[4], tmp_path / "out")
    assert (big.model.d_model, big.optim.warmup_steps) == (32, 2)


def test_config_hash_ignores_where_the_sweep_lives_but_not_the_ladder(tmp_path):
    ladder = load_ladder(write_ladder(tmp_path))
    rung = ladder.rungs()[0]
    here = config_sha256(ladder.config(rung, Path("runs/scaling")))
    assert here == config_sha256(ladder.config(rung, tmp_path / "elsewhere"))
    assert here != config_sha256(ladder.config(ladder.rungs()[1], Path("runs/scaling")))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"size": {}}, r"unknown keys \['size'\]"),
        ({"steps": [0, 4]}, "steps must be a list of positive integers"),
        ({"held_out": [{"size": "l3", "steps": 8}]}, "held_out entry"),
        ({"sizes": {"l1": ["model.d_model=16"]}}, "sizes.l1 must map dotted config keys"),
        ({"held_out": [{"size": "l1", "steps": 4}]}, r"held_out runs \['l1_s4'\] are also fitted"),
        (
            {"held_out_sizes": {"l2": {"model.d_model": 32}}},
            r"held_out_sizes \['l2'\] repeat names of sizes",
        ),
    ],
)
def test_bad_ladder_names_file_and_key(tmp_path, changes, message):
    path = write_ladder(tmp_path, **changes)
    with pytest.raises(ConfigError, match=message) as err:
        load_ladder(path)
    assert str(path) in str(err.value)


def fake_train(losses: dict[str, float], calls: list):
    """A train() stand-in: records the config, reports a loss chosen per run."""

    def train(cfg):
        calls.append(cfg)
        name = Path(cfg.train.run_dir).name
        return {"stopped": None, "loss": losses[name] + 0.1, "val": {"loss": losses[name]}}

    return train


def test_sweep_collects_n_d_and_loss(tmp_path):
    ladder = load_ladder(write_ladder(tmp_path))
    losses = {"l1_s2": 4.0, "l1_s4": 3.5, "l2_s2": 3.8, "l2_s4": 3.2}
    calls = []
    report = run_sweep(ladder, tmp_path / "out", train_fn=fake_train(losses, calls),
                       progress=False)  # fmt: skip
    assert (report.ran, report.skipped, report.stopped) == (4, 0, None)
    stored = read_results(tmp_path / "out" / RESULTS)
    assert stored == report.results
    by_name = {r.name: r for r in stored}
    assert {k: r.val_loss for k, r in by_name.items()} == losses
    for cfg in calls:
        r = by_name[Path(cfg.train.run_dir).name]
        assert r.tokens == cfg.train.steps * 8 * 32  # D = steps x batch x seq_len
        assert r.n_params == param_counts(cfg.model).non_embedding
    assert by_name["l2_s2"].n_params > by_name["l1_s2"].n_params > 0


def test_changed_ladder_is_refused(tmp_path):
    out = tmp_path / "out"
    losses = {"l1_s2": 4.0, "l1_s4": 3.5, "l2_s2": 3.8, "l2_s4": 3.2}
    run_sweep(load_ladder(write_ladder(tmp_path)), out, train_fn=fake_train(losses, []),
              progress=False)  # fmt: skip
    changed = load_ladder(write_ladder(tmp_path, overrides={"train.ckpt_every": 3}))
    with pytest.raises(ValueError, match="'l1_s2' was made with another config"):
        run_sweep(changed, out, train_fn=fake_train(losses, []), progress=False)


def test_stopped_run_stops_the_sweep_unrecorded(tmp_path):
    def stopped(cfg):
        return {"stopped": "SIGTERM", "loss": None, "val": None}

    report = run_sweep(load_ladder(write_ladder(tmp_path)), tmp_path / "out", train_fn=stopped,
                       progress=False)  # fmt: skip
    assert (report.ran, report.stopped, report.results) == (0, "SIGTERM", [])
    assert not (tmp_path / "out" / RESULTS).exists()


def test_bad_results_line_names_file_and_line(tmp_path):
    path = tmp_path / RESULTS
    path.write_text(json.dumps({"name": "a"}) + "\n")
    with pytest.raises(ValueError, match=rf"{RESULTS}:1: a result needs the keys"):
        read_results(path)


@pytest.mark.slow  # four real runs: ~40 s of CPU, mostly XLA compiles (init, step, eval)
def test_micro_ladder_end_to_end_then_skips(tmp_path):
    """2 sizes x 2 budgets trained for real on a small corpus; a rerun trains nothing."""
    ladder = load_ladder(write_ladder(tmp_path, write_corpus(tmp_path / "corpus")))
    out = tmp_path / "out"
    first = run_sweep(ladder, out, progress=False)
    assert (first.ran, first.skipped) == (4, 0)
    results = read_results(out / RESULTS)
    assert [r.name for r in results] == ["l1_s2", "l1_s4", "l2_s2", "l2_s4"]
    assert all(math.isfinite(r.val_loss) and r.val_loss < math.log(259) + 0.5 for r in results)
    assert (out / "l2_s4" / "config.yaml").is_file()

    def must_not_train(cfg):
        raise AssertionError(f"finished run {cfg.train.run_dir} trained again")

    again = run_sweep(ladder, out, train_fn=must_not_train, progress=False)
    assert (again.ran, again.skipped, again.results) == (0, 4, results)
    assert len((out / RESULTS).read_text().splitlines()) == 4


def test_preset_ladder_holds_out_a_larger_run():
    """configs/scaling/ladder.yaml resolves, and its held-out run is beyond every fitted run in
    N and in compute N x D (an extrapolation, not an interpolation)."""
    preset = Path(__file__).parents[2] / "configs" / "scaling" / "ladder.yaml"
    ladder = load_ladder(preset)
    rungs = ladder.rungs()
    assert len(rungs) == 4 * 4 + 1
    sizes = {}
    for rung in rungs:
        cfg = ladder.config(rung, Path("runs/scaling"))
        d = cfg.train.steps * cfg.train.batch_size * cfg.train.seq_len
        sizes[rung.name] = (param_counts(cfg.model).non_embedding, d, rung.held_out)
        assert cfg.optim.schedule == "cosine" and cfg.train.eval_every == 0
    fitted = [(n, d) for n, d, held in sizes.values() if not held]
    held_n, held_d = next((n, d) for n, d, held in sizes.values() if held)
    assert held_n > max(n for n, _ in fitted)
    assert held_n * held_d > max(n * d for n, d in fitted)
