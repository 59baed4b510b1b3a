"""`load_model` on a training run: the decoder's params only, whatever else the checkpoint holds."""

import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))

from train_fixtures import SyntheticBatches, tiny_config

from llm.checkpoint import CheckpointMismatch, layout_of, load_model
from llm.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step run with its MLP frozen (decoder leaves split across params and frozen)."""
    run_dir = tmp_path_factory.mktemp("load") / "run"
    cfg = tiny_config(run_dir, "train.steps=3", "train.ckpt_every=1", "train.freeze=[blocks/mlp/]")
    val = lambda: SyntheticBatches(8, 16, seed=1, limit=1)  # noqa: E731
    result = train(cfg, train_batches=SyntheticBatches(8, 16), val_batches=val)
    return run_dir, jax.device_get(result["params"])


def test_newest_step_is_the_trained_decoder(run):
    run_dir, want = run
    model = load_model(run_dir)
    assert (model.layout, model.step) == ("run", 3)
    assert jax.tree.structure(model.params) == jax.tree.structure(want)
    for got, ref in zip(jax.tree.leaves(model.params), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(got, ref)
    assert load_model(run_dir, step=1).step == 1


def test_optimiser_state_is_never_built_or_matched(run, tmp_path):
    """The saved config now names another optimiser (other state shapes): params still load."""
    run_dir, want = run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["optim"]["name"] = "sgd"  # momentum only: a restore of the full state would mismatch
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    got = load_model(copy).params
    np.testing.assert_array_equal(got["token_embed"], want["token_embed"])


def test_a_config_that_describes_another_model_names_the_directory(run, tmp_path):
    run_dir, _ = run
    copy = shutil.copytree(run_dir, tmp_path / "other")
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["model"]["d_ff"] = 128
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    want = r"(?s)other/checkpoints/3/state: .*blocks.mlp.down.w: checkpoint has shape"
    with pytest.raises(CheckpointMismatch, match=want):
        load_model(copy)


def test_missing_steps_and_foreign_directories_are_named(run, tmp_path):
    run_dir, _ = run
    with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 9 .*\[1, 2, 3\]"):
        load_model(run_dir, step=9)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FileNotFoundError, match=r"not a model directory.*found notes\.txt"):
        layout_of(tmp_path)
