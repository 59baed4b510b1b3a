"""Structured pruning: the smaller model computes what the original does with the removed
heads and MLP channels masked to zero, and the importances are their formulas."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm import abstract_params, forward, init_params, load_config
from llm.checkpoint import load_model
from llm.cli import main
from llm.compress.calibration import calibration_tokens
from llm.compress.structured import (
    StructuredSpec,
    channel_importance,
    head_importance,
    mask_structure,
    prune_structured,
    shrunk_config,
)
from llm.config import save_config
from llm.interop.model_dir import save_model
from llm.tokenizers import load_tokenizer


def model(*overrides: str):
    cfg = load_config("configs/tiny.yaml", list(overrides)).model
    params = init_params(cfg, jax.random.key(0))
    # break init's symmetry so heads and channels differ in importance
    noise = jax.tree.map(lambda a: 0.05 * jax.random.normal(jax.random.key(1), a.shape), params)
    return cfg, jax.tree.map(jnp.add, params, noise)


TOKENS = np.random.default_rng(0).integers(0, 259, (2, 16)).astype(np.int32)
CASES = {
    "gqa_groups": (("model.n_kv_heads=2", "model.qkv_bias=true", "model.mlp_bias=true",
                    "model.out_bias=true", "model.qk_norm=true"), StructuredSpec(2, 64)),
    "gqa_per_group": (("model.n_kv_heads=2",), StructuredSpec(2, 0, kv_mode="per_group")),
    "mha_gelu": (("model.activation=gelu",), StructuredSpec(heads=1, mlp=100)),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_smaller_model_equals_the_masked_original(case):
    overrides, spec = CASES[case]
    cfg, params = model(*overrides)
    new_cfg, small, kept = prune_structured(cfg, params, TOKENS, spec)
    assert new_cfg.n_heads == cfg.n_heads - spec.heads and new_cfg.d_ff == cfg.d_ff - spec.mlp
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params(new_cfg))[0]:
        sub = small
        for k in path:
            sub = sub[k.key]
        assert sub.shape == leaf.shape, path  # the arrays fit the smaller config
    ours = forward(new_cfg, small, TOKENS).logits_BLV
    masked = forward(cfg, mask_structure(cfg, params, kept), TOKENS).logits_BLV
    original = forward(cfg, params, TOKENS).logits_BLV
    np.testing.assert_allclose(np.asarray(ours), np.asarray(masked), rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(ours) - np.asarray(original)).max() > 1e-2  # something was removed


def test_groups_mode_keeps_whole_groups_and_per_group_mode_every_kv_head():
    cfg, params = model("model.n_kv_heads=2")
    _, _, kept = prune_structured(cfg, params, TOKENS, StructuredSpec(heads=2))
    for heads, kv in zip(kept["heads"], kept["kv_heads"], strict=True):
        np.testing.assert_array_equal(heads, [2 * kv[0], 2 * kv[0] + 1])  # group kv[0] whole
    _, _, kept = prune_structured(cfg, params, TOKENS, StructuredSpec(2, kv_mode="per_group"))
    np.testing.assert_array_equal(kept["kv_heads"], [[0, 1], [0, 1]])
    np.testing.assert_array_equal(kept["heads"] // 2, [[0, 1], [0, 1]])  # one head per group


def test_importances_are_the_contribution_norms():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 4 * 8)).astype(np.float32)
    w_o = rng.normal(size=(4, 8, 16)).astype(np.float32)
    direct = [np.linalg.norm(x[:, h * 8 : (h + 1) * 8] @ w_o[h]) for h in range(4)]
    np.testing.assert_allclose(np.asarray(head_importance(jnp.asarray(x), jnp.asarray(w_o))),
                               direct, rtol=1e-4)  # fmt: skip
    x_f = rng.normal(size=(50, 12)).astype(np.float32)
    w_down = rng.normal(size=(12, 16)).astype(np.float32)
    direct = [np.linalg.norm(np.outer(x_f[:, f], w_down[f])) for f in range(12)]
    np.testing.assert_allclose(np.asarray(channel_importance(x_f, w_down)), direct, rtol=1e-4)


def test_impossible_counts_are_refused_by_name():
    cfg = load_config("configs/tiny.yaml", ["model.n_kv_heads=2"]).model
    with pytest.raises(ValueError, match="multiple of 2"):
        shrunk_config(cfg, StructuredSpec(heads=1))
    with pytest.raises(ValueError, match="must remain"):
        shrunk_config(cfg, StructuredSpec(heads=4))
    with pytest.raises(ValueError, match="remove some"):
        StructuredSpec()
    small = shrunk_config(dataclasses.replace(cfg, n_kv_heads=None), StructuredSpec(heads=1))
    assert (small.n_heads, small.kv_heads, small.head_dim) == (3, 3, 16)
    # ALiBi's slopes are a function of the head count: removing heads would change the rest
    alibi = dataclasses.replace(cfg, n_kv_heads=None, pos_encoding="alibi")
    with pytest.raises(ValueError, match="ALiBi"):
        shrunk_config(alibi, StructuredSpec(heads=1))
    assert shrunk_config(alibi, StructuredSpec(mlp=8)).d_ff == cfg.d_ff - 8


@pytest.mark.slow  # the command's load, calibration and save: ~60 s on a loaded 2-core VM
def test_prune_command_writes_the_smaller_model(tmp_path):
    """`llm prune --structured` = prune_structured on the same calibration windows, saved
    under the smaller config, loadable by load_model."""
    cfg = load_config("configs/tiny.yaml", ["model.n_kv_heads=2"])
    _, params = model("model.n_kv_heads=2")
    written = save_model(tmp_path / "src", cfg.model, params, tokenizer_files={},
                         source={"test": True})  # fmt: skip
    byte = dataclasses.replace(written.data, tokenizer="byte")
    save_config(dataclasses.replace(written, data=byte), tmp_path / "src" / "config.yaml")
    args = ["prune", "--checkpoint", str(tmp_path / "src"), "--out", str(tmp_path / "small"),
            "--structured", "--heads", "2", "--mlp", "32", "--calib-seqs", "2",
            "--calib-len", "16"]  # fmt: skip
    assert main(args) == 0
    small = load_model(tmp_path / "small")
    assert (small.config.model.n_heads, small.config.model.kv_heads) == (2, 1)
    assert small.config.model.d_ff == 224
    tokens = calibration_tokens(load_tokenizer("byte"), n_seqs=2, seq_len=16)
    spec = StructuredSpec(heads=2, mlp=32, n_calib=2, calib_len=16)
    _, expected, _ = prune_structured(cfg.model, params, tokens, spec)
    for got, want in zip(jax.tree.leaves(small.params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
