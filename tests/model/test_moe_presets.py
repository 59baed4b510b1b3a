"""MoE presets count exactly the published parameters, total and active per token.

Counts come from `abstract_params` (jax.eval_shape: no memory), so a 46.7B-parameter model
is counted in a second; the expected numbers are derived below from the architecture.
Each preset is also the network `llm convert from-hf` reads from the published config.json.
"""

from pathlib import Path

import pytest

from llm.config import ModelConfig, load_config
from llm.model import accounting

ROOT = Path(__file__).resolve().parents[2]

# Mixtral-8x7B (vocab V 32000, D 4096, Y 32 layers, 32 heads of 128, 8 KV heads, F 14336,
# E 8 experts, k 2, untied; Mistral AI's model card / safetensors index: 46,702,792,704):
#   attention  = D*D (q) + 2*D*1024 (k, v) + D*D (o)            =     41,943,040 per layer
#   one expert = 3*D*F (SwiGLU gate, up, down)                  =    176,160,768
#   router D*E = 32,768; two RMSNorm scales 2*D = 8,192 per layer
#   layer      = 41,943,040 + 8*176,160,768 + 32,768 + 8,192  =  1,451,270,144
#   total      = 32 * layer + 2*V*D (embed, lm_head) + D (final norm)
#              = 46,440,644,608 + 262,144,000 + 4,096          = 46,702,792,704
#   active     = total - 32 * (8 - 2) * 176,160,768            = 12,879,925,248
MIXTRAL_TOTAL, MIXTRAL_ACTIVE = 46_702_792_704, 12_879_925_248
# Qwen1.5-MoE-A2.7B (V 151936, D 2048, Y 24, 16 heads = 16 KV heads of 128, q/k/v biases,
# E 60 experts of width 1408, k 4, a shared expert of width 5632 with a [D, 1] sigmoid gate,
# untied; model card: "14.3B" total, "2.7B" activated):
#   attention  = 4*D*D + 3*D (q, k, v biases)                   =     16,783,360 per layer
#   one expert = 3*D*1408 = 2,883,584; shared = 3*D*5632        =     34,603,008
#   layer      = 16,783,360 + 60*2,883,584 + 34,603,008 + D (shared gate) + 60*D (router)
#                + 2*D (norms)                                  =    570,560,512
#   total      = 24 * layer + 2*V*D + D                         = 14,315,784,192
#   active     = total - 24 * (60 - 4) * 2,883,584              =  2,689,173,504
QWEN_TOTAL, QWEN_ACTIVE = 14_315_784_192, 2_689_173_504


def _derived_mixtral() -> tuple[int, int]:
    V, D, Y, F, E, k = 32000, 4096, 32, 14336, 8, 2
    expert = 3 * D * F
    layer = (2 * D * D + 2 * D * 1024) + E * expert + D * E + 2 * D
    total = Y * layer + 2 * V * D + D
    return total, total - Y * (E - k) * expert


def _derived_qwen() -> tuple[int, int]:
    V, D, Y, E, k = 151936, 2048, 24, 60, 4
    expert, shared = 3 * D * 1408, 3 * D * 5632
    layer = (4 * D * D + 3 * D) + E * expert + shared + D + D * E + 2 * D
    total = Y * layer + 2 * V * D + D
    return total, total - Y * (E - k) * expert


def test_the_derivations_give_the_published_numbers():
    assert _derived_mixtral() == (MIXTRAL_TOTAL, MIXTRAL_ACTIVE)
    assert _derived_qwen() == (QWEN_TOTAL, QWEN_ACTIVE)


@pytest.mark.parametrize(
    ("preset", "total", "active"),
    [
        ("mixtral_8x7b", MIXTRAL_TOTAL, MIXTRAL_ACTIVE),
        ("qwen1_5_moe_a2_7b", QWEN_TOTAL, QWEN_ACTIVE),
    ],
)
def test_preset_total_and_active_counts(preset, total, active):
    cfg = load_config(ROOT / "configs" / f"{preset}.yaml").model
    counts = accounting.param_counts(cfg)
    assert (counts.total, counts.active) == (total, active)
    # FLOPs count every matmul weight a token uses: the active params less the embedding
    # lookup, the norm scales and the biases (a cross-check of the formula in matmul_params)
    D, Y = cfg.d_model, cfg.n_layers
    biases = Y * (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_size if cfg.qkv_bias else 0
    lookups_and_scales = cfg.vocab_size * D + (2 * Y + 1) * D + biases
    assert accounting.matmul_params(cfg) == active - lookups_and_scales


def test_dense_models_are_all_active():
    counts = accounting.param_counts(ModelConfig())
    assert counts.active == counts.total


def test_tiny_moe_active_count_by_hand():
    """E 4, k 1, experts of width 8 in a d_model 16 model: a token skips 3 of 4 experts."""
    cfg = ModelConfig(
        d_model=16, n_heads=2, n_layers=2, d_ff=32, vocab_size=50, activation="swiglu",
        n_experts=4, experts_per_token=1, moe_d_ff=8,
    )  # fmt: skip
    counts = accounting.param_counts(cfg)
    assert accounting.expert_params(cfg) == 2 * 4 * 3 * 16 * 8
    assert counts.total - counts.active == 2 * 3 * (3 * 16 * 8)


def test_dry_run_report_shows_active_parameters():
    cfg = load_config(ROOT / "configs/mixtral_8x7b.yaml")
    text = accounting.report(cfg)
    assert "46,702,792,704" in text and "parameters (active per token)" in text
    assert "12,879,925,248" in text


# config.json of the published checkpoints (mistralai/Mixtral-8x7B-v0.1, Qwen/Qwen1.5-MoE-A2.7B),
# written out here (no download in tests); keys that do not change the network (token ids,
# Qwen's sliding_window and max_window_layers while use_sliding_window is false) are inert.
PUBLISHED_CONFIGS = {
    "mixtral_8x7b": dict(
        model_type="mixtral", architectures=["MixtralForCausalLM"], vocab_size=32000,
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, hidden_act="silu",
        max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1e6, sliding_window=None,
        num_local_experts=8, num_experts_per_tok=2, router_aux_loss_coef=0.02,
        output_router_logits=False, tie_word_embeddings=False, attention_dropout=0.0,
        initializer_range=0.02, torch_dtype="bfloat16", use_cache=True, bos_token_id=1,
        eos_token_id=2,
    ),
    "qwen1_5_moe_a2_7b": dict(
        model_type="qwen2_moe", architectures=["Qwen2MoeForCausalLM"], vocab_size=151936,
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
        num_attention_heads=16, num_key_value_heads=16, hidden_act="silu",
        max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=1e6,
        use_sliding_window=False, sliding_window=32768, max_window_layers=21,
        decoder_sparse_step=1, moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
        num_experts=60, num_experts_per_tok=4, norm_topk_prob=False,
        router_aux_loss_coef=0.001, output_router_logits=False, tie_word_embeddings=False,
        attention_dropout=0.0, initializer_range=0.02, torch_dtype="bfloat16",
        bos_token_id=151643, eos_token_id=151643,
    ),
}  # fmt: skip


@pytest.mark.parametrize("preset", PUBLISHED_CONFIGS)
def test_preset_is_what_the_importer_reads_from_the_published_config(preset):
    """The preset and `llm convert from-hf` of the real checkpoint build the same network
    (the training-only choices of the preset aside: dtypes, remat, init)."""
    from llm.interop import model_config_from_hf

    imported = model_config_from_hf(PUBLISHED_CONFIGS[preset])
    ours = load_config(ROOT / "configs" / f"{preset}.yaml").model
    keep = ("dtype", "param_dtype", "remat", "init_std", "moe_lb_weight")
    differ = {
        k: (v, getattr(ours, k))
        for k, v in vars(imported).items()
        if k not in keep and getattr(ours, k) != v
    }
    assert differ == {}
    assert ours.moe_lb_weight == pytest.approx(imported.moe_lb_weight, rel=1e-3)
