"""Mixtral and Qwen2-MoE import with logit parity against `transformers` (tiny random models).

Each model (4 experts, top-2, d_model 64, 2 layers, float32) is built random-initialised by
transformers, saved with `save_pretrained` (one safetensors tensor per expert, as on the hub),
converted with `llm convert from-hf`, and must give transformers' logits within 1e-5 of the
logits' scale, also for a left-padded batch. Mixtral has a sliding window shorter than the
sequences; Qwen2-MoE keeps its top-k weights unnormalised (`norm_topk_prob` false) and has a
sigmoid-gated shared expert. Export writes back exactly the tensors transformers saved, and
KV-cached greedy decoding (llm.inference.Engine) gives transformers' greedy tokens.
"""

from __future__ import annotations

import json
from functools import partial

import jax
import numpy as np
import pytest
from hf_models import VOCAB, hf_logits, max_rel_err, randomize, save_hf

from llm.checkpoint import load_model
from llm.cli import main
from llm.config import ModelConfig
from llm.interop import export_hf, model_config_from_hf
from llm.interop.hf_config import UnsupportedConfig, hf_config_from_model, hf_model_type
from llm.model import forward

ARCHS = ("mixtral", "qwen2_moe")
IDS = np.random.default_rng(1).integers(0, VOCAB, size=(3, 16)).astype(np.int32)
FULL_BL = np.ones(IDS.shape, np.int32)


@partial(jax.jit, static_argnums=0)
def logits(cfg, params, ids_BL, positions_BL, segment_ids_BL):
    """Our logits; one compile per model serves every test (same shapes throughout)."""
    out = forward(cfg, params, ids_BL, positions_BL=positions_BL, segment_ids_BL=segment_ids_BL)
    return out.logits_BLV


def ours(m, params=None, positions_BL=None, segment_ids_BL=FULL_BL) -> np.ndarray:
    if positions_BL is None:
        positions_BL = np.broadcast_to(np.arange(IDS.shape[1], dtype=np.int32), IDS.shape)
    params = m.params if params is None else params
    return np.asarray(logits(m.config.model, params, IDS, positions_BL, segment_ids_BL))


def moe_hf_config(arch: str):
    import transformers as T

    common = dict(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, num_experts_per_tok=2,
        tie_word_embeddings=False, rms_norm_eps=1e-6,
    )  # fmt: skip
    if arch == "mixtral":  # window 8 < the 16-token sequences: the window matters
        return T.MixtralConfig(
            **common, intermediate_size=96, num_local_experts=4, sliding_window=8
        )
    return T.Qwen2MoeConfig(
        **common, intermediate_size=96, moe_intermediate_size=48, num_experts=4,
        shared_expert_intermediate_size=80, norm_topk_prob=False,
    )  # fmt: skip


def saved_dict(arch: str) -> dict:
    return json.loads(moe_hf_config(arch).to_json_string())


@pytest.fixture(scope="module", params=ARCHS)
def converted(request, tmp_path_factory):
    """(arch, torch model, HF dir, our loaded model) after `llm convert from-hf`."""
    import torch
    import transformers as T

    arch = request.param
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(moe_hf_config(arch), dtype=torch.float32)
    randomize(model, seed=3)
    hf_dir = save_hf(model.eval(), tmp_path_factory.mktemp(f"hf_{arch}"))
    ours = tmp_path_factory.mktemp(f"ours_{arch}")
    assert main(["convert", "from-hf", str(hf_dir), str(ours)]) == 0
    return arch, model, hf_dir, load_model(ours)


def test_logits_match_transformers(converted):
    arch, model, _, m = converted
    assert m.config.model.n_experts == 4 and m.config.model.capacity_factor is None
    err = max_rel_err(ours(m), hf_logits(model, IDS))
    assert err < 1e-5, f"{arch}: max relative logit error {err:.2e}"


def test_left_padded_batch_matches_transformers(converted):
    """Rows padded on the left (HF attention_mask 0; our segment id 0), positions counted
    from each row's first real token: the real tokens' logits equal transformers'."""
    import torch

    arch, model, _, m = converted
    pad = np.array([0, 5, 11])
    mask_BL = (np.arange(IDS.shape[1])[None, :] >= pad[:, None]).astype(np.int32)
    positions_BL = np.maximum(np.cumsum(mask_BL, axis=1) - 1, 0).astype(np.int32)
    with torch.no_grad():
        theirs = model(
            torch.from_numpy(IDS).long(),
            attention_mask=torch.from_numpy(mask_BL).long(),
            position_ids=torch.from_numpy(positions_BL).long(),
        ).logits.numpy()
    real = mask_BL.astype(bool)
    err = max_rel_err(
        ours(m, positions_BL=positions_BL, segment_ids_BL=mask_BL)[real], theirs[real]
    )
    assert err < 1e-5, f"{arch}: padded batch, max relative logit error {err:.2e}"


def test_expert_order_matters(converted):
    """The parity above can fail: swapping two experts' weights (router kept) moves the
    logits far beyond the tolerance, so every token's experts are really the ones HF picks."""
    _, model, _, m = converted
    params = jax.tree.map(np.asarray, m.params)
    for name in ("gate", "up", "down"):
        w = params["blocks"]["mlp"][name]["w"].copy()
        w[:, [0, 1]] = w[:, [1, 0]]
        params["blocks"]["mlp"][name]["w"] = w
    params = jax.tree.map(lambda x, y: jax.device_put(x, y.sharding), params, m.params)
    assert max_rel_err(ours(m, params), hf_logits(model, IDS)) > 1e-3


def test_export_writes_what_transformers_saved(converted, tmp_path):
    import torch
    import transformers as T
    from safetensors.numpy import load_file

    arch, model, hf_dir, m = converted
    export_hf(m.config.model, m.params, tmp_path, tokenizer=m.tokenizer, tokenizer_dir=hf_dir)
    original = load_file(str(hf_dir / "model.safetensors"))
    exported = load_file(str(tmp_path / "model.safetensors"))
    assert set(exported) == set(original)
    for name, w in exported.items():
        assert np.array_equal(w, original[name]), name
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == arch
    reloaded = T.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(reloaded) is type(model)
    np.testing.assert_array_equal(hf_logits(reloaded, IDS), hf_logits(model, IDS))


@pytest.mark.parametrize("arch", ARCHS)
def test_config_round_trips(arch):
    cfg = model_config_from_hf(saved_dict(arch))
    assert hf_model_type(cfg) == arch
    assert model_config_from_hf(hf_config_from_model(cfg, {"bos": 1, "eos": 2})) == cfg


def test_config_mapping():
    mixtral, qwen = (model_config_from_hf(saved_dict(a)) for a in ARCHS)
    assert (mixtral.moe_renormalize, mixtral.moe_d_ff, mixtral.moe_shared_d_ff) == (True, None, 0)
    assert mixtral.sliding_window == 8 and not mixtral.qkv_bias
    assert (qwen.moe_renormalize, qwen.moe_d_ff, qwen.moe_shared_d_ff) == (False, 48, 80)
    assert qwen.moe_shared_gate and qwen.qkv_bias and not qwen.out_bias
    # transformers' balance loss is k at uniform routing, pooled over layers; ours is 1 per
    # layer, summed over the Y layers: weight coef * k / Y (here 0.02 * 2 / 4)
    deeper = saved_dict("mixtral") | {"num_hidden_layers": 4, "router_aux_loss_coef": 0.02}
    assert model_config_from_hf(deeper).moe_lb_weight == 0.01
    renorm = model_config_from_hf(saved_dict("qwen2_moe") | {"norm_topk_prob": True})
    assert renorm.moe_renormalize


@pytest.mark.parametrize(
    ("arch", "change", "named"),
    [
        ("qwen2_moe", {"decoder_sparse_step": 2}, "decoder_sparse_step=2"),
        ("qwen2_moe", {"mlp_only_layers": [1]}, "mlp_only_layers"),
        ("qwen2_moe", {"shared_expert_intermediate_size": 0}, "shared_expert_intermediate"),
        ("mixtral", {"router_jitter_noise": 0.1}, "router_jitter_noise"),
        ("mixtral", {"hidden_act": "gelu"}, "hidden_act"),
        ("mixtral", {"router_bias": True}, "router_bias"),
    ],
)
def test_unsupported_fields_are_refused_by_name(arch, change, named):
    with pytest.raises(UnsupportedConfig, match=named):
        model_config_from_hf(saved_dict(arch) | change, source="x/config.json")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (dict(capacity_factor=1.25), "capacity_factor"),
        (dict(moe_gate="sigmoid"), "moe_gate"),
        (dict(moe_d_ff=32), "moe_d_ff"),
        (dict(moe_shared_d_ff=32), "moe_shared_gate"),  # a shared expert without Qwen's gate
        (dict(qk_norm=True), "qwen3"),
    ],
)
def test_export_refuses_what_transformers_cannot_compute(change, named):
    base = dict(pos_encoding="rope", norm="rmsnorm", activation="swiglu", n_experts=4)
    with pytest.raises(UnsupportedConfig, match=named):
        hf_model_type(ModelConfig(**base | change))


@pytest.mark.slow  # ~30 s per model on 2 busy CPU cores: prefill + step compiles
def test_cached_greedy_generation_matches_transformers(converted):
    """Two prompts of different lengths in one batch, decoded with the KV cache (one token
    per step through the router): the tokens equal transformers' greedy `generate`."""
    import torch

    from llm.inference import Engine, StopCriteria

    arch, model, _, m = converted
    prompts, n_new = [IDS[0, :5].tolist(), IDS[1, :9].tolist()], 12
    engine = Engine(m.config.model, m.params, max_len=32)
    done = engine.generate(prompts, stop=StopCriteria(max_new_tokens=n_new))
    for prompt, completion in zip(prompts, done, strict=True):
        with torch.no_grad():
            theirs = model.generate(
                torch.tensor([prompt]), max_new_tokens=n_new, min_new_tokens=n_new,
                do_sample=False, eos_token_id=None, pad_token_id=0,
            )[0, len(prompt) :].tolist()  # fmt: skip
        assert len(set(theirs)) > 2, f"{arch}: degenerate generation {theirs} tests little"
        assert completion.token_ids == theirs, f"{arch}: greedy tokens differ"


def test_hf_directory_loads_directly(converted):
    """`load_model` on the Hugging Face directory (no convert step) maps the same weights."""
    _, _, hf_dir, m = converted
    direct = load_model(hf_dir)
    assert direct.config.model == m.config.model
    pairs = zip(jax.tree.leaves(direct.params), jax.tree.leaves(m.params), strict=True)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
