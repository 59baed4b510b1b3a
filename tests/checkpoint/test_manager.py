"""Checkpoints: round trip, retention, half-written and corrupted ones skipped, mismatches named."""

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
