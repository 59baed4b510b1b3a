"""Prompt tuning, prefix tuning and bottleneck adapters: PEFT methods run in the forward pass.

References are written out by hand here: prompt tuning against the base model fed the
concatenated embeddings, prefix tuning against a numpy loop over queries, segments and heads.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_fixtures import SyntheticBatches

from llm.config import ConfigError
from llm.model import forward, init_params, logical_axes
from llm.model.attention import Attention
from llm.model.extras import Extras, LayerExtras
from llm.model.functional import abstract_params
from llm.model.positions import apply_rope, rope_inv_freq
from llm.train.loop import Trainer, train
from llm.train.losses import make_loss
from llm.train.trainable import MODEL, model_forward, trainable_from_config

P = 3  # virtual tokens / prefix entries


def _split(cfg, seed=1):
    params = init_params(cfg.model, jax.random.key(0))
    split = trainable_from_config(cfg).split(params, logical_axes(cfg.model), jax.random.key(seed))
    return params, split


def _tokens(batch=2, length=16):
    return jnp.asarray(next(SyntheticBatches(batch, length))["inputs"])


def _logits(cfg, params, frozen, tokens, **kw):
    run = lambda p, f: model_forward(cfg.model, p, f, tokens, **kw).logits_BLV  # noqa: E731
    return np.asarray(jax.jit(run)(params, frozen))


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_adapters_at_init_are_the_base_model_bit_for_bit(tiny, placement):
    cfg = tiny("peft.method=adapter", "peft.adapter_dim=4", f"peft.adapter_placement={placement}")
    base, split = _split(cfg)
    assert set(split.params["adapter"]) == ({"attn", "mlp"} if placement == "houlsby" else {"mlp"})
    tokens = _tokens()
    want = _logits(cfg, {MODEL: base}, {}, tokens)
    np.testing.assert_array_equal(_logits(cfg, split.params, split.frozen, tokens), want)
    # random `up` (a constant one would only shift each row, which the next LayerNorm removes)
    leaves, tree = jax.tree.flatten(split.params)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    noise = [0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    moved = tree.unflatten([x + n for x, n in zip(leaves, noise, strict=True)])
    assert np.abs(_logits(cfg, moved, split.frozen, tokens) - want).max() > 1e-3


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_prompt_logits_equal_the_hand_concatenated_embeddings(tiny, pos):
    """Real-token logits equal the base model run on [prompt; embeddings] (positions 0..P+L-1),
    and each document of a packed row equals that document alone with the prompt."""
    cfg = tiny("peft.method=prompt", f"peft.n_virtual_tokens={P}", f"model.pos_encoding={pos}")
    base, split = _split(cfg)
    prompt_PD = split.params["prompt"]["prompt"]
    tokens = _tokens()

    def by_hand(tokens_BL):
        B = tokens_BL.shape[0]
        embeds = jnp.concatenate(
            [
                jnp.broadcast_to(prompt_PD, (B, P, prompt_PD.shape[1])),
                base["token_embed"][tokens_BL],
            ],
            axis=1,
        )
        padded = jnp.concatenate([jnp.zeros((B, P), tokens_BL.dtype), tokens_BL], axis=1)
        out = forward(cfg.model, base, padded, input_embeddings_BLD=embeds)
        return np.asarray(out.logits_BLV[:, P:])

    got = _logits(cfg, split.params, split.frozen, tokens)
    np.testing.assert_allclose(got, by_hand(tokens), rtol=1e-5, atol=1e-5)
    # a packed row: documents of 10 and 6 tokens, positions restarting at 0
    seg = jnp.asarray([[1] * 10 + [2] * 6])
    posn = jnp.asarray([list(range(10)) + list(range(6))])
    packed = _logits(cfg, split.params, split.frozen, tokens[:1], positions_BL=posn,
                     segment_ids_BL=seg)  # fmt: skip
    np.testing.assert_allclose(packed[0, :10], by_hand(tokens[:1, :10])[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed[0, 10:], by_hand(tokens[:1, 10:])[0], rtol=1e-5, atol=1e-5)


def test_an_empty_prompt_is_the_base_model_bit_for_bit(tiny):
    """What is exactly true at P = 0 (a prompt cannot be neutral at P > 0: the real tokens
    attend to it)."""
    cfg = tiny()
    base = init_params(cfg.model, jax.random.key(0))
    tokens = _tokens()
    run = lambda p, e: forward(cfg.model, p, tokens, extras=e).logits_BLV  # noqa: E731
    empty = Extras(prompt_PD=jnp.zeros((0, cfg.model.d_model)))
    np.testing.assert_array_equal(jax.jit(run)(base, empty), jax.jit(run)(base, None))


def _reference_prefix_attention(attn, cfg, x, pos, seg, pk, pv):
    """numpy loops: per row, query and head, softmax over [prefix; same-segment keys at
    positions <= the query's], GQA head n reading kv head n // (N / K); then o."""
    q, k, v = (np.asarray(f(x)) for f in (attn.q, attn.k, attn.v))
    inv = rope_inv_freq(cfg)
    q, k = np.asarray(apply_rope(q, pos, inv)), np.asarray(apply_rope(k, pos, inv))
    pos, seg, pk, pv = map(np.asarray, (pos, seg, pk, pv))
    B, L, N, H = q.shape
    G = N // k.shape[2]
    out = np.zeros_like(q)
    for b in range(B):
        for i in range(L):
            if seg[b, i] == 0:
                continue
            seen = [j for j in range(L) if seg[b, j] == seg[b, i] and pos[b, j] <= pos[b, i]]
            for n in range(N):
                keys = np.concatenate([pk[:, n // G], k[b, seen, n // G]])
                vals = np.concatenate([pv[:, n // G], v[b, seen, n // G]])
                s = keys @ q[b, i, n] / np.sqrt(H)
                w = np.exp(s - s.max())
                out[b, i, n] = (w / w.sum()) @ vals
    return np.asarray(attn.o(jnp.asarray(out)))


@pytest.mark.parametrize("impl", ["xla", "xla_flash"])
def test_prefix_attention_equals_a_plain_reference_with_packing_and_gqa(tiny, impl):
    cfg = tiny("model.pos_encoding=rope", "model.n_heads=4", "model.n_kv_heads=2",
               f"model.attention_impl={impl}").model  # fmt: skip
    attn = Attention(cfg, out_std=0.02, rngs=nnx.Rngs(0))
    kx, kk, kv = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (2, 12, cfg.d_model))
    shape = (P, cfg.kv_heads, cfg.head_size)
    pk, pv = jax.random.normal(kk, shape), jax.random.normal(kv, shape)
    # row 0: documents of 5 and 7 tokens; row 1: one document of 9, then 3 padding tokens
    seg = jnp.asarray([[1] * 5 + [2] * 7, [1] * 9 + [0] * 3])
    pos = P + jnp.asarray([list(range(5)) + list(range(7)), [*range(9), 0, 0, 0]])
    got = attn(x, pos, seg, None, None, LayerExtras(pk, pv, None, True)).hidden_BLD
    want = _reference_prefix_attention(attn, cfg, x, pos, seg, pk, pv)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


METHODS = {
    "prompt": [f"peft.n_virtual_tokens={P}"],
    "prefix": [f"peft.n_virtual_tokens={P}"],
    "prefix_mlp": [f"peft.n_virtual_tokens={P}", "peft.prefix_projection=8"],
    "adapter": ["peft.adapter_dim=4"],
}


def _method(name):
    return [f"peft.method={name.split('_')[0]}", *METHODS[name]]


def _val():
    return SyntheticBatches(8, 16, seed=1, limit=1)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_train_step_changes_only_the_method_and_the_loss_falls(tiny, name):
    """4 real steps from the config alone (no Python trainable) on the tiny model."""
    cfg = tiny("train.steps=4", "optim.lr=1e-1", "optim.warmup_steps=0", *_method(name))
    kw = dict(train_batches=SyntheticBatches(8, 16), val_batches=_val)
    first = Trainer(cfg, **kw)
    before = jax.device_get((first.state.params, first.state.frozen))
    first.ckpt.close()
    state = train(cfg, **kw)["state"]
    assert set(state.params) == {name.split("_")[0]} and set(state.frozen) == {MODEL}
    for got, want in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(before[1]), strict=True):
        np.testing.assert_array_equal(got, want)  # the decoder bitwise unchanged
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(before[0]), strict=True):
        assert not np.array_equal(got, want)  # every leaf of the method moved
    batch = {k: jnp.asarray(v) for k, v in next(SyntheticBatches(8, 16)).items()}
    loss = jax.jit(make_loss(cfg).__call__)
    mean = lambda p, f: float(loss(p, f, batch, None).total / 128)  # noqa: E731  (8 x 16 tokens)
    assert mean(state.params, state.frozen) < mean(*before) - 0.005


def test_trainable_counts_are_the_formulas(tiny):
    counts = {}
    for name in METHODS:
        cfg = tiny(*_method(name))
        m = cfg.model
        split = trainable_from_config(cfg).split(abstract_params(m), logical_axes(m))
        counts[name] = sum(x.size for x in jax.tree.leaves(split.params))
    D, Y, K, H = m.d_model, m.n_layers, m.kv_heads, m.head_size
    assert counts["prompt"] == P * D
    assert counts["prefix"] == 2 * Y * P * K * H
    assert counts["prefix_mlp"] == P * D + D * 8 + 8 + 2 * (8 * Y * K * H + Y * K * H)
    assert counts["adapter"] == 2 * Y * (2 * D * 4 + 4 + D)  # houlsby: attn and mlp


def test_bad_settings_are_clear_errors(tiny):
    with pytest.raises(ConfigError, match=r"peft\.n_virtual_tokens: must be positive"):
        tiny("peft.n_virtual_tokens=0")
    with pytest.raises(ConfigError, match=r"peft\.adapter_dim: must be positive"):
        tiny("peft.adapter_dim=0")
    with pytest.raises(ConfigError, match=r"peft\.prefix_projection: must be >= 0"):
        tiny("peft.prefix_projection=-1")
    cfg = tiny("peft.method=prefix", "peft.n_virtual_tokens=3", "model.attention_impl=jax")
    _, split = _split(cfg)
    with pytest.raises(ValueError, match="attention_impl='jax' takes segment ids only"):
        _logits(cfg, split.params, split.frozen, _tokens())
    cfg = tiny("peft.method=prompt", "peft.n_virtual_tokens=20")  # 20 + 16 > max_seq_len 32
    _, split = _split(cfg)
    with pytest.raises(ValueError, match="20 virtual tokens \\+ 16 tokens exceed"):
        _logits(cfg, split.params, split.frozen, _tokens())


def test_loading_a_forward_method_run_names_the_method(tiny):
    from llm.checkpoint import load_model

    cfg = tiny("train.steps=1", *_method("prefix"))
    train(cfg, train_batches=SyntheticBatches(8, 16), val_batches=_val)
    with pytest.raises(ValueError, match=r"peft\.method=prefix, which changes the forward pass"):
        load_model(cfg.train.run_dir)


def test_prefix_and_prompt_tuning_match_hugging_face_peft(tmp_path):
    """Tiny random Llama (GQA, Llama-3.1 RoPE, attention biases): PEFT's prefix (its KV
    cache, real tokens at P + p) and prompt (concatenated embeddings) give our logits."""
    import torch
    from hf_models import hf_logits, make_hf_model, max_rel_err, save_hf
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    from llm.checkpoint import load_model

    ids = np.random.default_rng(0).integers(0, 300, size=(2, 12)).astype(np.int32)
    loaded = load_model(save_hf(make_hf_model("llama"), tmp_path / "hf"))
    m = loaded.config.model
    Y, K, H = m.n_layers, m.kv_heads, m.head_size
    rng = np.random.default_rng(1)
    cases = {  # PEFT's prefix layout: [P, layers * (k, v) * kv_heads * head_dim]
        "prefix": (PrefixTuningConfig, rng.normal(size=(P, Y * 2 * K * H))),
        "prompt": (PromptTuningConfig, 0.5 * rng.normal(size=(P, m.d_model))),
    }
    for name, (config, weight) in cases.items():
        weight = weight.astype(np.float32)
        model = get_peft_model(make_hf_model("llama"), config(task_type="CAUSAL_LM",
                                                              num_virtual_tokens=P))  # fmt: skip
        with torch.no_grad():
            model.prompt_encoder["default"].embedding.weight.copy_(torch.from_numpy(weight))
        theirs = hf_logits(model.eval(), ids)[:, -ids.shape[1] :]  # prompt: drop virtual rows
        if name == "prefix":
            kv = weight.reshape(P, Y, 2, K, H).transpose(2, 1, 0, 3, 4)  # [2, Y, P, K, H]
            extras = Extras(prefix_k_YPKH=jnp.asarray(kv[0]), prefix_v_YPKH=jnp.asarray(kv[1]))
        else:
            extras = Extras(prompt_PD=jnp.asarray(weight))
        ours = forward(m, loaded.params, ids, extras=extras).logits_BLV
        assert max_rel_err(ours, hf_logits(make_hf_model("llama"), ids)) > 1e-2
        err = max_rel_err(ours, theirs)
        assert err < 1e-5, f"{name}: max relative logit error {err:.2e} against PEFT"


def test_adapters_decode_with_a_kv_cache_as_without(tiny):
    """The cached path applies the adapters too: prefill + one step equal the full forward."""
    from llm.model.cache import init_cache

    cfg = tiny("peft.method=adapter", "peft.adapter_dim=4")
    base, split = _split(cfg)
    leaves, tree = jax.tree.flatten(split.params["adapter"])
    keys = jax.random.split(jax.random.key(4), len(leaves))
    adapters = tree.unflatten(
        [0.2 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )
    extras, tokens = Extras(adapters=adapters), _tokens(2, 9)
    full = forward(cfg.model, base, tokens, extras=extras).logits_BLV
    cache = init_cache(cfg.model, 2, 16)
    first = forward(cfg.model, base, tokens[:, :8], cache=cache, extras=extras)
    step = forward(cfg.model, base, tokens[:, 8:], cache=first.cache, extras=extras)
    np.testing.assert_allclose(first.logits_BLV, full[:, :8], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(step.logits_BLV[:, 0], full[:, 8], rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(full) - forward(cfg.model, base, tokens).logits_BLV).max() > 1e-3


@pytest.mark.parametrize("name", ["prompt", "prefix"])
def test_a_primed_kv_cache_decodes_like_the_full_forward(tiny, name):
    """`prime_cache` puts the virtual tokens / prefix in slots 0..P-1; prefill and one decode
    step then give the full forward's logits (real tokens at P + p in both)."""
    from llm.model import prime_cache
    from llm.model.cache import init_cache
    from llm.peft import FORWARD

    cfg = tiny(*_method(name), "model.pos_encoding=rope")
    base, split = _split(cfg)
    extras, tokens = FORWARD[name](split.params[name]), _tokens(2, 9)
    full = forward(cfg.model, base, tokens, extras=extras).logits_BLV
    cache, decode = prime_cache(cfg.model, base, init_cache(cfg.model, 2, 16), extras)
    np.testing.assert_array_equal(cache.lengths_B, [P, P])
    first = forward(cfg.model, base, tokens[:, :8], cache=cache, extras=decode)
    step = forward(cfg.model, base, tokens[:, 8:], cache=first.cache, extras=decode)
    np.testing.assert_allclose(first.logits_BLV, full[:, :8], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(step.logits_BLV[:, 0], full[:, 8], rtol=1e-5, atol=1e-5)
