"""Checkpoints: round trip, retention across restarts, half-written and corrupted ones skipped,
mismatches named, and what a save refuses (a step it did not write, NaN/Inf, a data state at
another step). File-by-file corruption: test_integrity.py."""

import dataclasses
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llm.checkpoint import Checkpointer, CheckpointMismatch, NoUsableCheckpoint
from llm.checkpoint.integrity import write_manifest
from llm.checkpoint.manager import CheckpointExists, NonFiniteState
from llm.train.state import init_state

PARAMS = {"blocks": {"w": jnp.arange(12.0).reshape(3, 4)}, "norm": {"scale": jnp.ones(4)}}


def _state(step, params=PARAMS):
    state = init_state(params, optax.adamw(1e-3), seed=0)
    shifted = jax.tree.map(lambda x: x + step, params)
    return dataclasses.replace(state, step=jnp.asarray(step, jnp.int32), params=shifted)


def _save(ckpt, step, val_loss=None):
    ckpt.save(
        _state(step), data_state={"next": step}, meta={"tokenizer": "byte"}, val_loss=val_loss
    )


@pytest.fixture
def ckpt(tmp_path):
    c = Checkpointer(tmp_path, keep=2, keep_best=1)
    yield c
    c.close()


def test_round_trip_restores_everything(ckpt):
    _save(ckpt, 5)
    ckpt.wait()
    restored = ckpt.restore(_state(0))
    assert restored.step == 5 and restored.data_state == {"next": 5}
    assert restored.meta == {"tokenizer": "byte"}
    want = _state(5)
    for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    assert isinstance(restored.state.opt_state[0], optax.ScaleByAdamState)


def test_keeps_latest_and_best(ckpt):
    for step, val in [(1, 3.0), (2, 1.0), (3, 2.0), (4, None), (5, None)]:
        _save(ckpt, step, val)
    ckpt.wait()
    assert ckpt.steps() == [2, 4, 5]  # newest two + lowest validation loss


def test_half_written_checkpoint_is_skipped(ckpt):
    _save(ckpt, 1)
    ckpt.wait()
    # An interrupted save leaves orbax's temporary directory with partial contents.
    partial = ckpt.directory / "2.orbax-checkpoint-tmp-1700000000"
    shutil.copytree(ckpt.directory / "1", partial)
    (partial / "state" / "manifest.ocdbt").unlink()
    assert ckpt.steps() == [1]
    assert ckpt.restore(_state(0)).step == 1


def _truncate_arrays(step_dir: Path) -> None:
    for root, _, files in os.walk(step_dir / "state"):
        for name in files:
            if "metadata" not in name.lower() and "array_metadatas" not in root:
                open(os.path.join(root, name), "wb").close()


def test_corrupted_newest_falls_back_to_previous(ckpt, capsys):
    _save(ckpt, 1)
    _save(ckpt, 2)
    ckpt.wait()
    _truncate_arrays(ckpt.directory / "2")
    restored = ckpt.restore(_state(0))
    assert restored.step == 1
    np.testing.assert_array_equal(restored.state.params["norm"]["scale"], np.full(4, 2.0))
    assert "checkpoints/2 is unreadable" in capsys.readouterr().err


def test_all_corrupted_raises(ckpt):
    _save(ckpt, 1)
    ckpt.wait()
    _truncate_arrays(ckpt.directory / "1")
    with pytest.raises(NoUsableCheckpoint, match="checkpoints/1"):
        ckpt.restore(_state(0))


def test_shape_mismatch_names_the_path(ckpt):
    _save(ckpt, 1)
    ckpt.wait()
    wider = {"blocks": {"w": jnp.zeros((3, 5))}, "norm": {"scale": jnp.ones(4, jnp.bfloat16)}}
    with pytest.raises(CheckpointMismatch) as err:
        ckpt.restore(init_state(wider, optax.adamw(1e-3), seed=0))
    text = str(err.value)
    assert (
        "params.blocks.w: checkpoint has shape (3, 4) float32, config expects (3, 5) float32"
        in text
    )
    assert (
        "params.norm.scale: checkpoint has shape (4,) float32, config expects (4,) bfloat16" in text
    )


def test_best_checkpoint_survives_a_restart(tmp_path):
    first = Checkpointer(tmp_path, keep=2, keep_best=1)
    for step, val in [(1, 1.0), (2, 3.0)]:
        _save(first, step, val)
    first.close()
    again = Checkpointer(tmp_path, keep=2, keep_best=1)  # a resumed run: metrics read from disk
    for step in (3, 4):
        _save(again, step)
    again.close()
    assert Checkpointer(tmp_path, keep=2, keep_best=1).steps() == [1, 3, 4]


def test_a_step_on_disk_is_never_kept_as_another_state(ckpt, tmp_path):
    _save(ckpt, 1)
    assert ckpt.save(_state(1), data_state={"next": 1}, meta={}) is False  # its own: the same
    ckpt.wait()
    other = Checkpointer(tmp_path, keep=2)  # another writer (or a new model) in the directory
    with pytest.raises(CheckpointExists, match=r"checkpoints/1 already exists .* train.overwrite"):
        other.save(_state(1), data_state={"next": 1}, meta={})
    other.close()
    restored = ckpt.restore(_state(0))
    assert restored.step == 1 and restored.data_state == {"next": 1}


def test_non_finite_state_is_never_saved(ckpt):
    bad = _state(3)
    params = {"blocks": {"w": bad.params["blocks"]["w"].at[1, 2].set(jnp.inf)},
              "norm": {"scale": bad.params["norm"]["scale"].at[0].set(jnp.nan)}}  # fmt: skip
    with pytest.raises(NonFiniteState, match=r"step 3: non-finite .* params.blocks.w, .*scale"):
        ckpt.save(dataclasses.replace(bad, params=params), data_state={}, meta={})
    ckpt.wait()
    assert ckpt.steps() == []


def test_data_state_must_be_at_the_step(ckpt):
    with pytest.raises(ValueError, match="data state is at batch 4 but the train state at step 5"):
        ckpt.save(_state(5), data_state={"next_batch": 4}, meta={})
    for step in (4, 5):
        ckpt.save(_state(step), data_state={"next_batch": step}, meta={})
    ckpt.wait()
    # A writer that saved the wrong position (checksums written over it): passed over.
    step5 = ckpt.directory / "5"
    (step5 / "data" / "metadata").write_text('{"next_batch": 3}')
    write_manifest(step5)
    restored = ckpt.restore(_state(0))
    assert restored.step == 4 and restored.unreadable == [5]


def test_set_aside_frees_the_step_number(ckpt, tmp_path):
    _save(ckpt, 1)
    _save(ckpt, 2)
    ckpt.wait()
    _truncate_arrays(ckpt.directory / "2")
    fresh = Checkpointer(tmp_path, keep=2)  # the next process: step 2 is not its own
    restored = fresh.restore(_state(0))
    assert restored.step == 1 and restored.unreadable == [2]
    (moved,) = fresh.set_aside(restored.unreadable)
    assert moved == tmp_path / "unreadable-checkpoints" / "2" and (moved / "state").is_dir()
    assert fresh.save(_state(2), data_state={"next": 2}, meta={}) is True  # written afresh
    fresh.wait()
    np.testing.assert_array_equal(fresh.restore(_state(0)).state.params["blocks"]["w"],
                                  _state(2).params["blocks"]["w"])  # fmt: skip
    fresh.close()
