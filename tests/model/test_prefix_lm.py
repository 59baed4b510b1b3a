"""Prefix-LM (`model.prefix_lm`): bidirectional over each document's prefix, causal after it."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llm.config.base import ConfigError
from llm.data.sft import pack_examples, render
from llm.interop.hf_config import UnsupportedConfig, check_transformer
from llm.model import forward
from llm.model.kv_cache import init_cache
from llm.model.prefix_lm import sft_prefix
from llm.tokenizers import ByteTokenizer
from llm.train.losses import SFTLoss
from llm.train.trainable import MODEL
from tests.model.conftest import make_cfg, params_for

CFG = make_cfg(prefix_lm=True)
# two packed documents (prefixes of 4 and 2 tokens) and padding
SEG = [1] * 9 + [2] * 5 + [0] * 2
POS = list(range(9)) + list(range(5)) + [0, 0]
PREFIX = [True] * 4 + [False] * 5 + [True] * 2 + [False] * 3 + [False] * 2


def loop_rule(prefix, seg=SEG, pos=POS):
    """Query i sees key j iff same document and (pos_j <= pos_i or j is a prefix token)."""
    L = len(seg)
    out = np.zeros((L, L), bool)
    for i, j in itertools.product(range(L), range(L)):
        out[i, j] = seg[i] == seg[j] != 0 and (pos[j] <= pos[i] or prefix[j])
    return out


def test_prefix_tokens_see_the_whole_prefix_and_nothing_after():
    """One layer: d logits[i] / d input[j] is nonzero exactly where the rule lets i see j."""
    cfg = make_cfg(prefix_lm=True, n_layers=1)
    params = params_for(cfg)
    L = len(SEG)
    x_BLD = jax.random.normal(jax.random.key(2), (1, L, cfg.d_model))
    batch = dict(
        positions_BL=jnp.asarray([POS]), segment_ids_BL=jnp.asarray([SEG]),
        prefix_BL=jnp.asarray([PREFIX]),
    )  # fmt: skip

    def logits_L(x):
        out = forward(cfg, params, jnp.zeros((1, L), jnp.int32), input_embeddings_BLD=x, **batch)
        return out.logits_BLV[0].sum(-1)

    seen_LL = np.asarray(jnp.abs(jax.jit(jax.jacrev(logits_L))(x_BLD)[:, 0]).sum(-1) > 0)
    want_LL = loop_rule(PREFIX)
    valid_L = np.asarray(SEG) != 0  # padding rows see nothing (only their own residual)
    np.testing.assert_array_equal(seen_LL[valid_L], want_LL[valid_L])
    assert seen_LL[0, 3] and not seen_LL[0, 4] and not seen_LL[3, 9]


def test_no_prefix_is_the_causal_model():
    params = params_for(CFG)
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 61)
    causal = forward(make_cfg(), params, tokens).logits_BLV
    none = forward(CFG, params, tokens, prefix_BL=jnp.zeros((2, 16), bool)).logits_BLV
    some_BL = jnp.broadcast_to(jnp.arange(16) < 5, (2, 16))
    some = forward(CFG, params, tokens, prefix_BL=some_BL).logits_BLV
    np.testing.assert_allclose(none, causal, atol=1e-6, rtol=0)
    assert float(jnp.abs(some - causal)[:, :5].max()) > 1e-3  # a real prefix changes them


def test_cached_decode_equals_the_full_forward():
    """The prompt primes the cache bidirectionally in one call, then tokens decode
    causally: every step's logits equal the full forward with the prompt as prefix."""
    params = params_for(CFG)
    P, L = 5, 12
    tokens = jax.random.randint(jax.random.key(3), (2, L), 0, 61)
    prefix = jnp.broadcast_to(jnp.arange(L) < P, (2, L))
    full = forward(CFG, params, tokens, prefix_BL=prefix).logits_BLV
    step = jax.jit(lambda p, t, c, f: forward(CFG, p, t, cache=c, prefix_BL=f))
    out = step(params, tokens[:, :P], init_cache(CFG, 2, 16), prefix[:, :P])
    logits = [out.logits_BLV]
    for t in range(P, L):
        out = step(params, tokens[:, t : t + 1], out.cache, prefix[:, t : t + 1])
        logits.append(out.logits_BLV)
    np.testing.assert_allclose(jnp.concatenate(logits, 1), full, atol=2e-5, rtol=0)


def test_sft_prefix_is_each_documents_first_prompt():
    # loss_mask[t] marks targets[t] = inputs[t + 1]; doc 1: loss at 3..4 and 7, doc 2 at 11
    loss = np.zeros(16, np.float32)
    loss[[3, 4, 7, 11]] = 1
    got = sft_prefix(jnp.asarray([loss]), jnp.asarray([POS]), jnp.asarray([SEG]))[0]
    # doc 1: tokens 0..3 (the input of the first loss position is the last prefix token);
    # doc 2 (from index 9): 9..11; token 4 (a target) and the padding never
    want = np.zeros(16, bool)
    want[[0, 1, 2, 3, 9, 10, 11]] = True
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.fixture(scope="module")
def sft_batch():
    tok = ByteTokenizer()
    chats = [
        [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
    ]
    examples = [render(tok, m) for m in chats]
    rows = pack_examples(examples, sum(len(e.ids) for e in examples) + 3, tok.pad_id)
    return tok, {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


@pytest.mark.slow  # ~15 s of CPU: two 259-token-vocab models over a packed SFT batch
def test_prefix_lm_sft_loss_reads_the_prompt_bidirectionally(sft_batch):
    """SFTLoss of a prefix-LM model is the cross-entropy of the forward with `sft_prefix`
    over the assistant tokens, and differs from the causal model's."""
    tok, batch = sft_batch
    cfg = make_cfg(vocab_size=tok.vocab_size, max_seq_len=256, prefix_lm=True)
    params = params_for(cfg)
    ids = dict(positions_BL=batch["positions"], segment_ids_BL=batch["segment_ids"])
    prefix = sft_prefix(batch["loss_mask"], batch["positions"], batch["segment_ids"])
    mask = np.asarray(batch["loss_mask"])

    def ce_sum(model_cfg, **kw):
        logits = forward(model_cfg, params, batch["inputs"], **ids, **kw).logits_BLV
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        return float(np.sum(np.asarray(ce) * mask))

    total = float(SFTLoss(cfg)({MODEL: params}, {}, batch, None).total)
    np.testing.assert_allclose(total, ce_sum(cfg, prefix_BL=prefix), rtol=1e-5)
    assert abs(total - ce_sum(make_cfg(vocab_size=tok.vocab_size, max_seq_len=256))) > 1e-3


@pytest.mark.slow  # ~6 s of CPU: a full jacobian over a 94-token SFT batch
def test_no_loss_position_sees_its_target(sft_batch):
    """With the SFT prefix, logits at each loss position t never depend on input t + 1
    (its target), through all layers."""
    tok, batch = sft_batch
    cfg = make_cfg(vocab_size=tok.vocab_size, max_seq_len=256, prefix_lm=True)
    params = params_for(cfg)
    B, L = batch["inputs"].shape
    prefix = sft_prefix(batch["loss_mask"], batch["positions"], batch["segment_ids"])
    x_BLD = jax.random.normal(jax.random.key(4), (B, L, cfg.d_model))
    mask_BL = batch["loss_mask"] > 0
    loss_rows, loss_cols = np.nonzero(np.asarray(mask_BL))

    def grad_of_target(x):
        out = forward(
            cfg,
            params,
            batch["inputs"],
            input_embeddings_BLD=x,
            prefix_BL=prefix,
            positions_BL=batch["positions"],
            segment_ids_BL=batch["segment_ids"],
        )
        return out.logits_BLV.sum(-1)  # fmt: skip

    jac_BLBLD = jax.jit(jax.jacrev(grad_of_target))(x_BLD)
    leak = [
        float(jnp.abs(jac_BLBLD[b, t, b, t + 1]).sum())
        for b, t in zip(loss_rows, loss_cols, strict=True)
    ]
    assert max(leak) == 0.0
    last_prefix = int(np.argmin(np.asarray(prefix[0]))) - 1  # document 1's last prefix token
    assert last_prefix > 10  # and token 0 reads it: the prompt is bidirectional
    assert float(jnp.abs(jac_BLBLD[0, 0, 0, last_prefix]).sum()) > 0


def test_refusals_name_the_switch():
    params = params_for(CFG)
    tokens = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ValueError, match=r"model\.prefix_lm=true: every forward needs prefix_BL"):
        forward(CFG, params, tokens)
    with pytest.raises(ValueError, match=r"model\.prefix_lm=false would ignore it"):
        forward(make_cfg(), params, tokens, prefix_BL=jnp.ones((1, 4), bool))
    with pytest.raises(ConfigError, match="prefix_lm"):
        make_cfg(prefix_lm=True, attention_impl="pallas")
    with pytest.raises(ConfigError, match="prefix_lm"):
        make_cfg(prefix_lm=True, attention_pattern="strided")
    with pytest.raises(ConfigError, match="prefix_lm"):
        make_cfg(prefix_lm=True, causal=False)
    with pytest.raises(UnsupportedConfig, match="prefix_lm=True"):
        check_transformer(CFG, "GGUF export")
