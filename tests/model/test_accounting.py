"""Parameter counts equal the published figures; FLOPs agree with XLA's cost analysis."""

import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from llm.config import ModelConfig, load_config
from llm.model import abstract_params, accounting, forward

ROOT = Path(__file__).resolve().parents[2]

# Published totals: GPT-2 from the Hugging Face checkpoints (gpt2, gpt2-medium), Llama-2-7B,
# Llama-3-8B and Mistral-7B-v0.1 from their model cards / safetensors index files.
PUBLISHED = {
    "gpt2_small": 124_439_808,
    "gpt2_medium": 354_823_168,
    "llama2_7b": 6_738_415_616,
    "llama3_8b": 8_030_261_248,
    "llama3_1_8b": 8_030_261_248,
    "mistral_7b": 7_241_732_096,
}


@pytest.mark.parametrize("preset", PUBLISHED)
def test_preset_parameter_counts(preset):
    cfg = load_config(ROOT / "configs" / f"{preset}.yaml")
    assert accounting.param_counts(cfg.model).total == PUBLISHED[preset]


def test_non_embedding_count_gpt2_small():
    counts = accounting.param_counts(load_config(ROOT / "configs/gpt2_small.yaml").model)
    # 124,439,808 - 50257*768 (tokens) - 1024*768 (positions)
    assert counts.non_embedding == 85_056_000


@pytest.mark.parametrize(
    "kw",
    [
        dict(activation="gelu"),
        dict(activation="swiglu", n_kv_heads=2, pos_encoding="rope", norm="rmsnorm"),
    ],
)
def test_forward_flops_agree_with_xla(kw):
    """XLA counts every op, we count matmuls and attention: XLA is 0-5% above us.

    Layers unrolled (`scan_layers=False`), because XLA's cost analysis counts a while-loop
    (scan) body once; the reference attention, because it computes the dense square.
    """
    cfg = ModelConfig(
        d_model=256, n_heads=8, d_ff=768, n_layers=2, vocab_size=1024, max_seq_len=128,
        scan_layers=False, attention_impl="xla", **kw,
    )  # fmt: skip
    B, L = 2, 128
    lowered = jax.jit(lambda p, t: forward(cfg, p, t).logits_BLV).lower(
        abstract_params(cfg), jax.ShapeDtypeStruct((B, L), jnp.int32)
    )
    analysis = lowered.compile().cost_analysis()
    xla = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
    ours = accounting.forward_flops_per_token(cfg, L, attention="dense") * B * L
    assert 1.0 <= xla / ours <= 1.05, (xla, ours)


def test_causal_halving_and_window():
    assert accounting.mean_context(4, None) == 2.5  # (1 + 2 + 3 + 4) / 4
    assert accounting.mean_context(4, 2) == 1.75  # (1 + 2 + 2 + 2) / 4
    assert accounting.mean_context(4, None, causal=False) == 4.0
    cfg = ModelConfig()
    dense = accounting.forward_flops_per_token(cfg, 128, attention="dense")
    causal = accounting.forward_flops_per_token(cfg, 128)
    attn_dense = 4 * 128 * cfg.n_heads * cfg.head_size * cfg.n_layers
    assert dense - causal == pytest.approx(attn_dense * (1 - 64.5 / 128))
    assert accounting.train_flops_per_token(cfg, 128) == 3 * causal


def test_memory_estimate_adamw_7b():
    cfg = load_config(ROOT / "configs/llama2_7b.yaml")
    mem = accounting.memory_estimate(cfg)
    n = PUBLISHED["llama2_7b"]
    assert mem.params == 4 * n and mem.grads == 4 * n and mem.optimizer == 8 * n
    none = accounting.activation_bytes(
        cfg.__class__(
            model=cfg.model.__class__(**{**cfg.model.__dict__, "remat": "none"}), train=cfg.train
        )
    )
    assert mem.activations < none  # full remat saves memory


def test_dry_run_report_for_7b_is_fast():
    cmd = [
        sys.executable,
        "-m",
        "llm.cli",
        "model",
        "--config",
        str(ROOT / "configs/llama2_7b.yaml"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "6,738,415,616" in out and "optimizer state (adamw)" in out


def test_t5_matmul_params_are_every_projection_plus_the_output_layer():
    """An encoder-decoder's per-token matmul weights: every w of both stacks (one encoder
    token and one decoder token) plus the tied output layer, counted from the real tree."""
    cfg = ModelConfig(
        arch="t5", pos_encoding="none", norm="rmsnorm", norm_bias=False, activation="relu",
        n_layers=2, n_decoder_layers=3, d_model=32, n_heads=4, d_ff=64, vocab_size=100,
    )  # fmt: skip
    params = abstract_params(cfg)
    stacks = [params["encoder_blocks"], params["decoder_blocks"]]
    projections = sum(
        math.prod(leaf.shape)
        for stack in stacks
        for path, leaf in jax.tree_util.tree_flatten_with_path(stack)[0]
        if jax.tree_util.keystr(path).endswith("['w']")
    )
    assert accounting.matmul_params(cfg) == projections + 100 * 32
    assert accounting.forward_flops_per_token(cfg, 16) > 2 * accounting.matmul_params(cfg)
