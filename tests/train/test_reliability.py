"""Runs at their edges, in process (docs/reliability.md, "Checkpoints" and "Runs").

Bad starts are refused before anything on disk changes; the final checkpoint is written
before the final evaluation; an error in the loop saves the steps before it; a signal at
start-up or during a step leaves a checkpoint or says none was needed; a finished run stays
finished; a corrupt newest checkpoint is set aside and its steps trained again, exactly.
Kills at random moments in separate processes: test_reliability_kill.py.
"""

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from test_loop import _like
from train_fixtures import SyntheticBatches, tiny_config

from llm.checkpoint import Checkpointer, CheckpointMismatch
from llm.config import ConfigError
from llm.train.loop import TrainingDiverged, train
from llm.train.run_dir import RunDirectoryInUse


def _val():
    return SyntheticBatches(8, 16, seed=1, limit=2)


class Evaluations:
    """val_batches that counts its calls and, while `failing`, raises (a broken split)."""

    def __init__(self, failing: bool = False):
        self.calls, self.failing = 0, failing

    def __call__(self):
        self.calls += 1
        if self.failing:
            raise RuntimeError("the validation split is empty")
        return _val()


class SignalAt(SyntheticBatches):
    """Batches that send this process SIGTERM when restored ("start") or at batch `at`."""

    def __init__(self, at: int | None = None):
        super().__init__(8, 16)
        self.at = at

    def set_state(self, state):
        super().set_state(state)
        if self.at is None:
            os.kill(os.getpid(), signal.SIGTERM)

    def __next__(self):
        if self.index + 1 == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__next__()


def _train(run_dir, *overrides, batches=None, val=_val):
    cfg = tiny_config(run_dir, *overrides)
    return train(cfg, train_batches=batches or SyntheticBatches(8, 16), val_batches=val)


def _records(run_dir: Path, split: str = "train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def _files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def _steps(run_dir: Path) -> list[int]:
    ckpt = Checkpointer(run_dir, keep=10)
    steps = ckpt.steps()
    ckpt.close()
    return steps


@pytest.fixture(scope="module")
def used(tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints 2 and 4; tests work on copies."""
    run_dir = tmp_path_factory.mktemp("used") / "run"
    _train(run_dir, "train.steps=4", "train.ckpt_every=2")
    return run_dir


def _copy(used: Path, tmp_path: Path) -> Path:
    shutil.copytree(used, tmp_path / "run")
    return tmp_path / "run"


USED = ["train.steps=6", "train.ckpt_every=2"]
BAD_STARTS = [  # (id, used run directory?, overrides, error, message)
    ("lr inf", False, ["optim.lr=.inf"], ConfigError, "optim.lr: Input should be a finite"),
    ("lr nan", True, [*USED, "optim.lr=.nan"], ConfigError, "optim.lr: Input should be a finite"),
    ("exit status", False, ["train.requeue_exit_status=256"], ConfigError,
     "train.requeue_exit_status: must be in"),
    ("fresh run in a used directory", True, [*USED, "train.resume=false"], RunDirectoryInUse,
     r"holds checkpoints \(steps 2, 4\) .* train.overwrite=true"),
    ("another model", True, [*USED, "model.d_model=64"], CheckpointMismatch,
     r"(?s)checkpoints/4: checkpoint does not match .* params.model.token_embed: checkpoint has "
     r"shape \(259, 32\) .* the run's own config.yaml"),
    ("lr that explodes", False, ["optim.lr=1e30", "train.ckpt_every=1"], TrainingDiverged,
     "step 1: .* the update made the parameters non-finite .* No checkpoint was written"),
]  # fmt: skip


@pytest.mark.slow  # two of the rows start a run (~30 s)
@pytest.mark.parametrize("row", BAD_STARTS, ids=[row[0] for row in BAD_STARTS])
def test_a_bad_start_is_refused_and_changes_nothing(used, tmp_path, row):
    _, used_dir, overrides, error, message = row
    run_dir = _copy(used, tmp_path) if used_dir else tmp_path / "run"
    before = _files(run_dir) if used_dir else {}
    with pytest.raises(error, match=message):
        _train(run_dir, *overrides)
    if used_dir:  # config.yaml, checkpoints and metrics exactly as they were
        assert _files(run_dir) == before
    else:  # nothing was saved (the exploding update was due a checkpoint at step 1)
        assert not run_dir.exists() or _steps(run_dir) == []


@pytest.mark.slow  # two short runs (~30 s)
def test_final_checkpoint_comes_before_the_final_evaluation_and_a_rerun_is_a_no_op(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="validation split is empty"):
        _train(run_dir, "train.steps=4", "train.ckpt_every=0", val=Evaluations(failing=True))
    assert _steps(run_dir) == [4]  # the steps survive the failed evaluation
    checkpoints = {k: v for k, v in _files(run_dir).items() if k.startswith("checkpoints/")}

    evaluations = Evaluations()
    result = _train(run_dir, "train.steps=4", "train.ckpt_every=0", val=evaluations)
    assert result["already_finished"] and result["step"] == 4 and result["stopped"] is None
    assert evaluations.calls == 1  # the evaluation the failure had missed, and nothing else
    assert result["loss"] == _records(run_dir)[-1]["loss"] and len(_records(run_dir)) == 4
    again = Evaluations()
    result = _train(run_dir, "train.steps=4", "train.ckpt_every=0", val=again)
    (logged,) = _records(run_dir, "val")
    assert again.calls == 0 and result["val"] == {k: logged[k] for k in result["val"]}
    assert {k: v for k, v in _files(run_dir).items() if k.startswith("checkpoints/")} == checkpoints

    old_config = (run_dir / "config.yaml").read_text()
    result = _train(run_dir, "train.steps=6", "train.ckpt_every=0", "optim.lr=1e-3")
    assert result["resumed_from"] == 4 and result["step"] == 6 and _steps(run_dir) == [4, 6]
    assert (run_dir / "config.4.yaml").read_text() == old_config  # the old config is kept
    assert "lr: 0.001" in (run_dir / "config.yaml").read_text()


@pytest.mark.slow  # one short run (~15 s)
def test_an_error_in_the_loop_saves_the_steps_before_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="validation split is empty"):
        _train(run_dir, "train.steps=6", "train.eval_every=3", "train.ckpt_every=0",
               val=Evaluations(failing=True))  # fmt: skip
    assert "error after step 3: saved a checkpoint of it" in capsys.readouterr().err
    ckpt = Checkpointer(run_dir, keep=3)
    restored = ckpt.restore(_like(tiny_config(run_dir, "train.steps=6")))
    ckpt.close()
    assert restored.step == 3 and restored.data_state == {"next_batch": 3}


@pytest.mark.slow  # one short run (~15 s)
@pytest.mark.parametrize("at", [None, 6], ids=["during-start-up", "during-a-step"])
def test_a_signal_leaves_a_checkpoint_or_says_none_was_needed(used, tmp_path, capsys, at):
    run_dir = _copy(used, tmp_path)
    result = _train(run_dir, "train.steps=8", "train.ckpt_every=0", batches=SignalAt(at))
    assert result["stopped"] == "SIGTERM" and result["exit_status"] == 75
    err = capsys.readouterr().err
    if at is None:  # restored step 4, then the signal: nothing new to save
        assert result["step"] == 4 and _steps(run_dir) == [2, 4]
        assert (
            "SIGTERM received before the first step: no checkpoint needed (step 4 is on disk)"
            in err
        )
    else:  # the step in hand is finished and saved
        assert result["step"] == 6 and _steps(run_dir) == [2, 4, 6]
        assert "SIGTERM received: saved a checkpoint at step 6" in err


@pytest.mark.slow  # one short run (~15 s)
def test_a_corrupt_newest_checkpoint_is_set_aside_and_trained_again_exactly(used, tmp_path):
    run_dir = _copy(used, tmp_path)
    chunk = next((run_dir / "checkpoints" / "4" / "state" / "ocdbt.process_0" / "d").iterdir())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 1
    chunk.write_bytes(bytes(data))
    result = _train(run_dir, "train.steps=4", "train.ckpt_every=2")
    assert result["resumed_from"] == 2 and not result["already_finished"]
    assert (run_dir / "unreadable-checkpoints" / "4" / "state").is_dir()
    assert _steps(run_dir) == [2, 4]  # step 4 written again, not found "already saved"
    first, again = _records(used), _records(run_dir)
    assert [r["loss"] for r in again[-2:]] == [r["loss"] for r in first[2:4]]  # bitwise


@pytest.mark.slow  # one short run (~15 s)
def test_overwrite_starts_over_by_name(used, tmp_path, capsys):
    run_dir = _copy(used, tmp_path)
    result = _train(run_dir, "train.steps=2", "train.resume=false", "train.overwrite=true")
    assert result["resumed_from"] is None and _steps(run_dir) == [2]
    assert [r["step"] for r in _records(run_dir)] == [1, 2]  # the old run's metrics are gone
    assert "train.overwrite: deleted the old run's checkpoints [2, 4], metrics.jsonl" in (
        capsys.readouterr().err
    )
