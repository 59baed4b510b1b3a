"""Sparsity kept through fine-tuning: `llm prune` writes a model with exact zeros, and a run
from it with `train.keep_sparsity` trains every other weight while the zeros stay exactly
zero, in the saved run that `load_model` reads back."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm import abstract_params, init_params, load_config
from llm.checkpoint import load_model
from llm.cli import main
from llm.compress.sparsity import NAME, apply_masks, mask_axes, masks_from_zeros
from llm.config import ConfigError, save_config
from llm.interop.model_dir import save_model
from llm.model import logical_axes
from llm.train import train
from llm.train.trainable import trainable_from_config

TINY = ["model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.d_ff=64"]
WORDS = "river stone lantern orchard violet harbour meadow ember quiet silver copper".split()


def leaf(tree, path: str):
    for key in path.split("/"):
        tree = tree[key]
    return np.asarray(tree)


def test_masked_weights_get_zero_gradients():
    """The mechanism: d/dw of where(mask, w, 0) is 0 where pruned, so no update reaches them;
    without the mask the same loss does move them (the test would catch a no-op mask)."""
    cfg = load_config("configs/tiny.yaml", TINY).model
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.02, a.shape), a.dtype),
                          abstract_params(cfg))  # fmt: skip
    w = params["blocks"]["mlp"]["up"]["w"]
    params["blocks"]["mlp"]["up"]["w"] = jnp.where(jnp.abs(w) > 0.01, w, 0.0)
    masks = masks_from_zeros(params)
    assert set(masks["blocks"]) == {"attn", "mlp"} and "token_embed" not in masks

    def loss(p, masked):
        p = apply_masks(p, masks) if masked else p
        return jnp.sum(p["blocks"]["mlp"]["up"]["w"] ** 2 + 0.1 * p["blocks"]["mlp"]["up"]["w"])

    pruned = ~np.asarray(masks["blocks"]["mlp"]["up"]["w"])
    assert 0.2 < pruned.mean() < 0.8
    grad = np.asarray(jax.grad(loss)(params, True)["blocks"]["mlp"]["up"]["w"])
    assert np.all(grad[pruned] == 0.0) and np.all(grad[~pruned] != 0.0)
    unmasked = np.asarray(jax.grad(loss)(params, False)["blocks"]["mlp"]["up"]["w"])
    assert np.all(unmasked[pruned] != 0.0)


def test_mask_axes_follow_the_weights():
    cfg = load_config("configs/tiny.yaml", TINY).model
    axes = mask_axes(logical_axes(cfg))
    assert axes["blocks"]["attn"]["q"]["w"] == logical_axes(cfg)["blocks"]["attn"]["q"]["w"]
    assert "token_embed" not in axes and "attn_norm" not in axes["blocks"]


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory) -> Path:
    """A random tiny model (byte tokenizer) pruned 2:4 by `llm prune`."""
    tmp = tmp_path_factory.mktemp("sparse")
    cfg = load_config("configs/tiny.yaml", TINY)
    written = save_model(tmp / "src", cfg.model, init_params(cfg.model, jax.random.key(0)),
                         tokenizer_files={}, source={"test": True})  # fmt: skip
    byte = dataclasses.replace(written.data, tokenizer="byte")
    save_config(dataclasses.replace(written, data=byte), tmp / "src" / "config.yaml")
    args = ["prune", "--checkpoint", str(tmp / "src"), "--out", str(tmp / "pruned"), "--nm", "2:4"]
    assert main(args) == 0
    return tmp / "pruned"


def test_prune_command_writes_exact_zeros_and_records_them(pruned_dir):
    model = load_model(pruned_dir)
    w = leaf(model.params, "blocks/attn/q/w").reshape(2, 32 // 4, 4, -1)  # [Y, K/M, M, N]
    np.testing.assert_array_equal((w != 0).sum(axis=2), 2)
    source = json.loads((pruned_dir / "source.json").read_text())
    assert source["prune"]["nm"] == [2, 4] and source["sparsity"]["total"] == 0.5
    assert model.tokenizer.encode("ab") == [97, 98]  # the byte tokenizer came along


def fine_tune(init: Path, run_dir: Path, *extra: str) -> None:
    corpus = run_dir.parent / "corpus.jsonl"
    rng = np.random.default_rng(0)
    corpus.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS, 40))}) + "\n"
                              for _ in range(30)))  # fmt: skip
    overrides = [
        f"train.init_from={init}", f"train.run_dir={run_dir}", "train.steps=3",
        "train.eval_every=0", "train.batch_size=8", "train.seq_len=32", "train.progress_bar=false",
        f"data.corpus={corpus}", "data.eval_corpus=null", "data.val_fraction=0.25",
        f"data.cache_dir={run_dir.parent / 'cache'}", "optim.lr=0.01", "optim.warmup_steps=0",
        *extra,
    ]  # fmt: skip
    train(load_config(None, overrides))


@pytest.mark.slow  # one short training run (~60 s on a loaded 2-core VM, most of it compiling)
def test_fine_tuning_keeps_pruned_weights_exactly_zero(pruned_dir, tmp_path):
    fine_tune(pruned_dir, tmp_path / "run", "train.keep_sparsity=true")
    before, after = load_model(pruned_dir).params, load_model(tmp_path / "run").params
    for path in ("blocks/attn/q/w", "blocks/attn/o/w", "blocks/mlp/gate/w", "blocks/mlp/down/w"):
        w0, w1 = leaf(before, path), leaf(after, path)
        pruned = w0 == 0
        assert pruned.mean() == 0.5
        assert np.all(w1[pruned] == 0.0), path  # exact zeros after 3 AdamW steps
        assert np.all(w1[~pruned] != w0[~pruned]), path  # every other weight was trained
    assert np.any(leaf(after, "token_embed") != leaf(before, "token_embed"))


def test_keep_sparsity_is_a_frozen_component(pruned_dir, tmp_path):
    cfg = load_config(None, [f"train.init_from={pruned_dir}", "train.keep_sparsity=true"])
    trainable = trainable_from_config(cfg)
    assert not trainable.extra[NAME].trainable  # frozen: no gradient, no optimiser state
    params = load_model(pruned_dir).params
    split = trainable.split(params, logical_axes(cfg.model), jax.random.key(0))
    assert NAME in split.frozen and NAME not in split.params
    np.testing.assert_array_equal(leaf(split.frozen[NAME], "blocks/mlp/up/w"),
                                  leaf(params, "blocks/mlp/up/w") != 0)  # fmt: skip


def test_bad_combinations_are_refused(pruned_dir):
    with pytest.raises(ConfigError, match="keep_sparsity"):
        load_config(None, ["train.keep_sparsity=true"])
    base = [f"train.init_from={pruned_dir}", "train.keep_sparsity=true"]
    with pytest.raises(ValueError, match=r"peft\.method=lora"):
        trainable_from_config(load_config(None, [*base, "peft.method=lora"]))
    with pytest.raises(ValueError, match="muon"):
        trainable_from_config(load_config(None, [*base, "optim.name=muon"]))
