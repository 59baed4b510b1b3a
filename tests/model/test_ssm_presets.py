"""Mamba presets and accounting: the published parameter count of mamba-130m, FLOPs counted
from the real param tree, and configs/mamba_tiny.yaml / hybrid_tiny.yaml training on the
default corpus through `llm.train.train` (the loss falls)."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import pytest

from llm.config import ModelConfig, load_config
from llm.model import abstract_params, accounting
from llm.train import train

PRESETS = Path(__file__).resolve().parents[2] / "configs"

# state-spaces/mamba-130m (V 50280, D 768, Y 24, N 16, E 1536, K 4, R 48, tied): per layer
#   in_proj D*2E 2,359,296 + conv K*E + E 7,680 + x_proj E*(R+2N) 122,880 + dt_proj R*E + E
#   75,264 + A_log E*N 24,576 + D E 1,536 + out_proj E*D 1,179,648 + norm D 768 = 3,771,648
#   total = 24 * 3,771,648 + V*D 38,615,040 + final norm 768 = 129,135,360, which is also
#   what transformers' MambaForCausalLM of that config counts (built on the meta device).
MAMBA_130M = 129_135_360


def test_mamba_130m_parameter_count():
    cfg = ModelConfig(arch="mamba", vocab_size=50280, d_model=768, n_layers=24, norm="rmsnorm")
    total = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params(cfg)))
    assert total == MAMBA_130M
    assert accounting.param_counts(cfg).total == MAMBA_130M


def test_matmul_params_are_the_projection_weights():
    """accounting counts per token exactly the projection matrices of the param tree (+ the
    output layer): in_proj, x_proj, dt_proj, out_proj (and a hybrid's attention and MLP)."""
    for every in (0, 2):
        cfg = ModelConfig(arch="mamba", d_model=32, n_layers=4, n_heads=4, d_ff=64,
                          tie_embeddings=False, ssm_attention_every=every,
                          pos_encoding="rope" if every else "learned")  # fmt: skip
        params = abstract_params(cfg)
        weights = [x for path, x in jax.tree_util.tree_leaves_with_path(params)
                   if jax.tree_util.keystr(path).endswith("['w']")]  # fmt: skip
        expected = sum(math.prod(x.shape) for x in weights) + math.prod(params["lm_head"].shape)
        assert accounting.matmul_params(cfg) == expected, every


@pytest.mark.slow  # two 40-step runs on the corpus + evaluations; cold compile on a loaded VM
@pytest.mark.parametrize("preset", ["mamba_tiny", "hybrid_tiny"])
def test_preset_trains_on_the_default_corpus(tmp_path, preset):
    """The preset as written (fewer steps, a short evaluation): the validation loss ends far
    below the uniform model's log(259) = 5.56 nats per byte."""
    overrides = [f"train.run_dir={tmp_path}", "train.steps=40", "train.eval_every=0",
                 "train.ckpt_every=0", "eval.batches=2", "train.progress_bar=false",
                 "train.tensorboard=false", "train.async_checkpointing=false"]  # fmt: skip
    cfg = load_config(PRESETS / f"{preset}.yaml", overrides)
    out = train(cfg)
    assert math.isfinite(out["loss"])
    assert out["val"]["loss"] < 0.75 * math.log(259), out["val"]
