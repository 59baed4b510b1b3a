"""The mixture-of-experts MLP (llm/model/moe.py): routing, capacity, aux losses, paths.

Every fast path (dense dropless, sorted `ragged_dot` dropless, capacity dispatch) is checked
against `moe_reference` (a loop over experts); routing details against hand computations.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llm.config import Config, ConfigError, ModelConfig, PeftConfig
from llm.model import abstract_params, accounting, forward, logical_axes
from llm.model.cache import init_cache
from llm.model.mlp import MLP
from llm.model.moe import MoE, capacity, dense_config, load_balance_loss, moe_reference, route
from llm.model.quantized import weight_layouts
from llm.peft.import_hf import _modules
from llm.peft.lora import find_targets
from llm.sharding import memory
from tests.model.conftest import make_cfg, params_for

MOE = dict(n_experts=4, experts_per_token=2, activation="swiglu")
PATHS = {
    "dense": {},
    "ragged": {"moe_dropless": "ragged"},
    "capacity": {"capacity_factor": 0.75},  # C = ceil(0.75 * 12 * 2 / 4) = 5 slots: drops
}


def moe_layer(**overrides) -> tuple[ModelConfig, MoE]:
    cfg = make_cfg(**{**MOE, **overrides})
    return cfg, MoE(cfg, out_std=0.1, rngs=nnx.Rngs(3))


@pytest.fixture(scope="module")
def x_BLD():
    return jax.random.normal(jax.random.key(5), (2, 12, 32))


@pytest.mark.parametrize("path", list(PATHS))
def test_fast_paths_equal_the_reference_value_and_gradient(path, x_BLD):
    _, moe = moe_layer(**PATHS[path], moe_shared_d_ff=16)
    graphdef, state = nnx.split(moe)

    def loss(state, fn):
        y_BLD = fn(nnx.merge(graphdef, state), x_BLD)
        return jnp.sum(jnp.sin(y_BLD))  # a nonlinear read-out: weights every position apart

    fast = jax.value_and_grad(loss)(state, lambda m, x: m(x).hidden_BLD)
    ref = jax.value_and_grad(loss)(state, moe_reference)
    np.testing.assert_allclose(fast[0], ref[0], rtol=1e-5)
    for g, r in zip(jax.tree.leaves(fast[1]), jax.tree.leaves(ref[1]), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
    if path == "capacity":  # the reference honours the drops (else this test proves little)
        assert int(moe.route(x_BLD).dropped) > 0


@pytest.mark.parametrize(
    "path", ["dense", *(pytest.param(p, marks=pytest.mark.slow) for p in ("ragged", "capacity"))]
)  # the dense path by default; the others are checked against the reference above
def test_one_expert_top1_equals_the_dense_mlp(path, tokens_BL):
    """E=1, k=1: the router's softmax over one logit is 1, so the layer is the dense MLP
    (capacity 1.0 gives that expert one slot per token: nothing dropped)."""
    over = {**PATHS[path], "capacity_factor": 1.0} if path == "capacity" else PATHS[path]
    dense_cfg = make_cfg(activation="swiglu")
    moe_cfg = make_cfg(n_experts=1, experts_per_token=1, activation="swiglu", **over)
    dense = params_for(dense_cfg)
    moe = dict(dense)
    mlp = dense["blocks"]["mlp"]
    D = dense_cfg.d_model
    moe["blocks"] = {**dense["blocks"], "mlp": {
        "router": {"w": jnp.ones((dense_cfg.n_layers, D, 1))},  # any logit: softmax gives 1
        **{k: {"w": mlp[k]["w"][:, None]} for k in ("up", "gate", "down")},
    }}  # fmt: skip
    want = forward(dense_cfg, dense, tokens_BL)
    got = forward(moe_cfg, moe, tokens_BL)
    np.testing.assert_allclose(got.logits_BLV, want.logits_BLV, rtol=1e-5, atol=1e-6)
    # one expert takes every assignment: f = P = 1, so each layer's loss is 1 * weight
    np.testing.assert_allclose(got.aux_losses["moe_lb"], 0.01 * moe_cfg.n_layers, rtol=1e-6)


def test_dropless_routes_every_assignment_even_when_skewed(x_BLD):
    """A router skewed hard towards expert 0 (positive inputs, +1 on its weight column, so
    its logit gains sum|x| ~ 25): capacity drops, dropless keeps every assignment."""
    x_BLD = jnp.abs(x_BLD)
    for over in (PATHS["dense"], PATHS["ragged"], {"capacity_factor": 1.0}):
        _, moe = moe_layer(**over)
        moe.router.w[...] = moe.router.w[...].at[:, 0].add(1.0)
        r = moe.route(x_BLD)
        assert bool(jnp.all(r.experts_BLK[..., 0] == 0))  # skewed indeed
        if "capacity_factor" in over:
            assert int(r.dropped) >= 2 * (12 - 6)  # per row, expert 0 keeps 6 of 12 first picks
            continue
        assert int(r.dropped) == 0 and bool(jnp.all(r.keep_BLK))
        np.testing.assert_allclose(moe(x_BLD).hidden_BLD, moe_reference(moe, x_BLD), atol=1e-6)
        # every token got its full weight: the combine weights sum to one per token
        np.testing.assert_allclose(jnp.sum(r.weights_BLK, -1), 1.0, rtol=1e-6)


def _hand_keep(experts_BLK: np.ndarray, n_experts: int, cap: int) -> np.ndarray:
    """The capacity queue by hand: per row, tokens in order, each token's k choices in
    order; an expert accepts assignments until it holds `cap`."""
    B, L, K = experts_BLK.shape
    keep = np.zeros(experts_BLK.shape, bool)
    for b in range(B):
        load = [0] * n_experts
        for t in range(L):
            for k in range(K):
                e = experts_BLK[b, t, k]
                keep[b, t, k] = load[e] < cap
                load[e] += keep[b, t, k]
    return keep


@pytest.mark.parametrize("cf", [0.5, 1.0, 1.5])
def test_capacity_drops_match_a_hand_count(cf, x_BLD):
    cfg, moe = moe_layer(capacity_factor=cf)
    r = moe.route(x_BLD)
    cap = capacity(cfg, x_BLD.shape[1])
    assert cap == math.ceil(cf * 12 * 2 / 4)
    want = _hand_keep(np.asarray(r.experts_BLK), cfg.n_experts, cap)
    np.testing.assert_array_equal(np.asarray(r.keep_BLK), want)
    assert int(r.dropped) == int((~want).sum())
    # a token all of whose assignments were dropped passes through the residual only
    y_BLD = moe(x_BLD).hidden_BLD
    gone_BL = ~want.any(-1)
    np.testing.assert_array_equal(np.asarray(y_BLD)[gone_BL], 0.0)
    if cf == 0.5:
        assert gone_BL.any()  # C=3 slots for 48 assignments over 4 experts: many go


def test_capacity_is_causal_future_tokens_leave_past_outputs_bit_equal(x_BLD):
    """With k=2 and a tight capacity, new tokens at positions 8.. change no output before 8:
    the queue is in token order, so a future token never takes an earlier one's slot. (The
    gradient causality test cannot see this: a drop is a zero, not a gradient path.)"""
    _, moe = moe_layer(capacity_factor=0.5)
    y_BLD = moe(x_BLD).hidden_BLD
    for seed in range(4):
        new_BLD = jax.random.normal(jax.random.key(100 + seed), (2, 4, 32))
        x2_BLD = x_BLD.at[:, 8:].set(new_BLD)
        np.testing.assert_array_equal(moe(x2_BLD).hidden_BLD[:, :8], y_BLD[:, :8])
    assert int(moe.route(x_BLD).dropped) > 0  # drops happen, yet the past is untouched


@pytest.mark.parametrize("path", list(PATHS))
def test_padding_takes_no_slot_and_no_loss(path, x_BLD):
    """Appending padding (segment 0) leaves the real tokens' outputs, both aux losses and
    (with a capacity) the drops as they were; padding gets no routed output."""
    _, moe = moe_layer(**PATHS[path], moe_lb_weight=0.5, moe_z_weight=0.25)
    seg_BL = jnp.ones((2, 12), jnp.int32)
    padded_BLD = jnp.concatenate([x_BLD, jax.random.normal(jax.random.key(9), (2, 8, 32))], 1)
    padded_seg_BL = jnp.concatenate([seg_BL, jnp.zeros((2, 8), jnp.int32)], 1)
    want, got = moe(x_BLD, seg_BL), moe(padded_BLD, padded_seg_BL)
    np.testing.assert_allclose(got.hidden_BLD[:, :12], want.hidden_BLD, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got.hidden_BLD[:, 12:], 0.0)
    for name in ("moe_lb", "moe_z"):
        np.testing.assert_allclose(got.aux_losses[name], want.aux_losses[name], rtol=1e-6)
    r = moe.route(padded_BLD, padded_seg_BL)
    assert int(r.dropped) == int(moe.route(x_BLD).dropped)
    assert not bool(jnp.any(r.keep_BLK[:, 12:]))
    np.testing.assert_allclose(moe_reference(moe, padded_BLD, padded_seg_BL), got.hidden_BLD,
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_model_passes_segment_ids_to_the_moe(tokens_BL):
    """Through the Block: right padding changes neither the real tokens' logits nor the
    model's MoE losses (before, padding tokens were routed and counted)."""
    cfg = make_cfg(**MOE, capacity_factor=1.0, moe_z_weight=1e-3)
    params = params_for(cfg)
    seg_BL = jnp.ones_like(tokens_BL)
    pad_BL = jnp.concatenate([tokens_BL, jnp.zeros((2, 6), tokens_BL.dtype)], 1)
    pad_seg_BL = jnp.concatenate([seg_BL, jnp.zeros((2, 6), seg_BL.dtype)], 1)
    want = forward(cfg, params, tokens_BL, segment_ids_BL=seg_BL)
    got = forward(cfg, params, pad_BL, segment_ids_BL=pad_seg_BL)
    np.testing.assert_allclose(got.logits_BLV[:, :12], want.logits_BLV, rtol=1e-5, atol=1e-5)
    for name in ("moe_lb", "moe_z"):
        np.testing.assert_allclose(got.aux_losses[name], want.aux_losses[name], rtol=1e-5)


def test_load_balance_loss_golden_uniform_and_skewed():
    # golden by hand: E=2, k=1, experts (0,0,0,1): f=(3/4, 1/4); P=(0.6, 0.4);
    # loss = 2 * (0.75*0.6 + 0.25*0.4) = 1.1
    experts = jnp.array([0, 0, 0, 1]).reshape(1, 4, 1)
    probs = jnp.tile(jnp.array([0.6, 0.4]), (1, 4, 1))
    np.testing.assert_allclose(load_balance_loss(experts, probs), 1.1, rtol=1e-6)
    E, L = 4, 8
    uniform = load_balance_loss((jnp.arange(L) % E).reshape(1, L, 1), jnp.full((1, L, E), 1 / E))
    np.testing.assert_allclose(uniform, 1.0, rtol=1e-6)  # the minimum
    skewed_P = jnp.tile(jnp.array([0.7, 0.1, 0.1, 0.1]), (1, L, 1))
    skewed = load_balance_loss(jnp.zeros((1, L, 1), int), skewed_P)
    np.testing.assert_allclose(skewed, 4 * 0.7, rtol=1e-6)  # all to expert 0: E * P_0
    assert float(skewed) > 1.0


def test_layer_reports_weighted_losses(x_BLD):
    _, moe = moe_layer(moe_lb_weight=0.5, moe_z_weight=0.25)
    r, aux = moe.route(x_BLD), moe(x_BLD).aux_losses
    logits = np.asarray(r.logits_BLE, np.float64)
    lse = np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(aux["moe_z"], 0.25 * np.mean(lse**2), rtol=1e-5)  # ST-MoE eq. 5
    probs = np.exp(logits - lse[..., None])
    f_E = np.bincount(np.asarray(r.experts_BLK).ravel(), minlength=4) / r.experts_BLK.size
    np.testing.assert_allclose(aux["moe_lb"], 0.5 * 4 * np.sum(f_E * probs.mean((0, 1))), 1e-5)
    assert set(moe_layer(moe_lb_weight=0.0)[1](x_BLD).aux_losses) == set()


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
@pytest.mark.parametrize("renormalize", [True, False])
def test_gates_and_renormalisation(gate, renormalize):
    cfg = make_cfg(**MOE, moe_gate=gate, moe_renormalize=renormalize)
    logits = jax.random.normal(jax.random.key(2), (2, 6, 4)) * 2
    r = route(cfg, logits)
    lg = np.asarray(logits, np.float64)
    exp = np.exp(lg)
    scores = exp / (1 + exp) if gate == "sigmoid" else exp / exp.sum(-1, keepdims=True)
    top = np.argsort(-scores, -1)[..., :2]
    np.testing.assert_array_equal(np.asarray(r.experts_BLK), top)
    w = np.take_along_axis(scores, top, -1)
    if renormalize:
        w = w / w.sum(-1, keepdims=True)
        np.testing.assert_allclose(np.asarray(r.weights_BLK).sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(r.weights_BLK, w, rtol=1e-5)
    # the balancing loss reads per-token distributions: sigmoid scores normalised to sum 1
    np.testing.assert_allclose(np.asarray(r.probs_BLE).sum(-1), 1.0, rtol=1e-6)


def test_shared_expert_with_sigmoid_gate_adds_a_dense_mlp(x_BLD):
    cfg, moe = moe_layer(moe_shared_d_ff=16, moe_shared_gate=True)
    mlp = MLP(dense_config(cfg, 16), out_std=0.1, rngs=nnx.Rngs(0))
    nnx.update(mlp, nnx.state(moe.shared))
    routed_BLD = moe._dense(x_BLD, moe.route(x_BLD))  # the routed experts alone
    gate_BL1 = jax.nn.sigmoid(x_BLD @ moe.shared_gate.w[...])
    want = routed_BLD + gate_BL1 * mlp(x_BLD).hidden_BLD
    np.testing.assert_allclose(moe(x_BLD).hidden_BLD, want, rtol=1e-5, atol=1e-6)


def test_model_sums_layer_losses_and_params_have_the_contract_layout():
    cfg = make_cfg(**MOE, moe_shared_d_ff=16, moe_shared_gate=True, moe_z_weight=1e-3)
    p = params_for(cfg)["blocks"]["mlp"]
    Y, D, F, E = cfg.n_layers, cfg.d_model, cfg.d_ff, cfg.n_experts
    shapes = jax.tree.map(lambda a: a.shape, p)
    assert shapes == {
        "router": {"w": (Y, D, E)}, "up": {"w": (Y, E, D, F)}, "gate": {"w": (Y, E, D, F)},
        "down": {"w": (Y, E, F, D)}, "shared_gate": {"w": (Y, D, 1)},
        "shared": {"up": {"w": (Y, D, 16)}, "gate": {"w": (Y, D, 16)}, "down": {"w": (Y, 16, D)}},
    }  # fmt: skip
    axes = logical_axes(cfg)["blocks"]["mlp"]
    assert tuple(axes["up"]["w"]) == ("layers", "expert", "embed", "mlp")
    assert tuple(axes["down"]["w"]) == ("layers", "expert", "mlp", "embed")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"experts_per_token": 1}, "experts_per_token: is read only by a mixture-of-experts"),
        ({"n_experts": -1}, "n_experts: must be >= 0"),
        ({"n_experts": 4, "experts_per_token": 5}, r"experts_per_token: must be in \[1, n_expe"),
        ({"n_experts": 4, "capacity_factor": 0.0}, "capacity_factor: must be positive"),
        ({"n_experts": 4, "moe_shared_gate": True}, "moe_shared_gate: gates the shared expert"),
        ({"n_experts": 4, "mlp_bias": True}, "mlp_bias: the MoE experts have no biases"),
        ({"n_experts": 4, "moe_lb_weight": -1.0}, "moe_lb_weight: must be >= 0"),
        ({"n_experts": 4, "capacity_factor": 1.0, "moe_dropless": "ragged"}, "moe_dropless"),
        ({"n_experts": 4, "arch": "lstm"}, "n_experts: needs arch transformer"),
    ],
)
def test_config_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(ModelConfig(), **overrides)


def test_paths_that_would_skip_the_experts_refuse_moe():
    """Quantization / pruning / GGUF read Linear layers only, LoRA-family adapters a matrix
    per layer: on stacked expert weights both would act wrongly, so both refuse by name."""
    cfg = make_cfg(**MOE)
    with pytest.raises(ValueError, match=r"4 experts of a mixture-of-experts MLP \(model.n_exp"):
        weight_layouts(cfg)
    peft = PeftConfig(method="lora", target=("blocks/mlp/down/w",))
    with pytest.raises(ValueError, match="blocks/mlp/down/w holds the stacked weights of a mix"):
        find_targets(peft, abstract_params(cfg), logical_axes(cfg))
    router = PeftConfig(method="lora", target=("blocks/mlp/router/w",))  # a plain matrix: fine
    (target,) = find_targets(router, abstract_params(cfg), logical_axes(cfg))
    assert target.in_shape == (cfg.d_model,) and target.out_shape == (cfg.n_experts,)


def test_hf_lora_import_offers_no_expert_modules():
    """A Mixtral-layout MoE's HF rules name one module per expert ("{j}"); LoRA import
    offers only per-layer modules, the router among them, never an expert."""
    cfg = make_cfg(**MOE, norm="rmsnorm", pos_encoding="rope", tie_embeddings=False)
    modules = _modules(cfg)
    assert "model.layers.{i}.block_sparse_moe.gate" in modules
    assert modules["model.layers.{i}.self_attn.q_proj"][0] == "blocks/attn/q/w"
    assert not [m for m in modules if "{j}" in m or "experts" in m]


def test_dropless_moe_decodes_through_the_kv_cache(tokens_BL):
    """Routing is per token, so a dropless MoE model's cached decode (prefill, then one token
    per step) equals the full forward. (With a capacity it cannot: capacity counts the tokens
    of each call, and a one-token step never fills an expert: `init_cache` refuses it.)"""
    cfg = make_cfg(**MOE)
    params = params_for(cfg)
    full = forward(cfg, params, tokens_BL).logits_BLV
    step = jax.jit(lambda t, c: forward(cfg, params, t, cache=c))
    out = step(tokens_BL[:, :8], init_cache(cfg, 2, 16))
    logits = [out.logits_BLV]
    for t in range(8, tokens_BL.shape[1]):
        out = step(tokens_BL[:, t : t + 1], out.cache)
        logits.append(out.logits_BLV)
    np.testing.assert_allclose(jnp.concatenate(logits, 1), full, rtol=1e-5, atol=1e-5)


def test_capacity_moe_refuses_a_cache():
    with pytest.raises(
        ValueError, match=r"decode with a dropless MoE: model\.capacity_factor null"
    ):
        init_cache(make_cfg(**PATHS["capacity"], **MOE), 2, 16)


@pytest.mark.parametrize("path", list(PATHS))
def test_activation_estimates_count_the_experts(path):
    """Both estimates (llm/model/accounting.py, llm/sharding/memory.py) add the routed
    experts' activations: an MoE config needs more than the same dense one."""
    train = dataclasses.replace(Config().train, seq_len=32, batch_size=4)
    dense = Config(model=make_cfg(activation="swiglu", remat="none"), train=train)
    moe = dataclasses.replace(dense, model=dataclasses.replace(dense.model, **MOE, **PATHS[path]))
    assert accounting.activation_bytes(moe) > accounting.activation_bytes(dense)
    rules, shape = {n: () for n in ("batch", "length", "heads", "vocab")}, {}
    assert memory.activation_bytes(moe, rules, shape) > memory.activation_bytes(dense, rules, shape)
    assert accounting.moe_floats_per_token(dense.model, 12) == 0
