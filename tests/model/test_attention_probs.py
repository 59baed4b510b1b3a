"""`forward(..., return_attention=True)`: the attention probabilities of every layer.

They must be a distribution over exactly the keys the mask rules allow (llm/ops/masks.py,
re-derived here with plain loops), must leave the forward's logits unchanged whichever
backend the model normally runs, and must equal softmax(q k^T / sqrt(H)) recomputed by hand
in NumPy from the params.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.model import forward
from llm.model.cache import init_cache
from llm.model.extras import Extras
from llm.ops.attention import attention_probs
from tests.model.conftest import make_cfg, params_for

# two packed documents then padding (segment 0) in row 0; one document and padding in row 1
SEGMENTS_BL = np.array(
    [[1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]], np.int32
)


def restart_positions(segment_ids_BL: np.ndarray) -> np.ndarray:
    """Positions counting from 0 inside each packed document (as the packer makes them)."""
    positions_BL = np.zeros_like(segment_ids_BL)
    for b, row in enumerate(segment_ids_BL):
        for i in range(1, len(row)):
            positions_BL[b, i] = positions_BL[b, i - 1] + 1 if row[i] == row[i - 1] else 0
    return positions_BL


POSITIONS_BL = restart_positions(SEGMENTS_BL)
TOKENS_BL = np.array(jax.random.randint(jax.random.key(3), SEGMENTS_BL.shape, 1, 61), np.int32)


def visible(segment_ids_BL, positions_BL, window) -> np.ndarray:
    """mask_BLS by the rules in words: same non-padding document, key not after the query,
    and (with a window) fewer than `window` positions back."""
    B, L = segment_ids_BL.shape
    mask = np.zeros((B, L, L), bool)
    for b in range(B):
        for q in range(L):
            for k in range(q + 1):
                same = segment_ids_BL[b, q] == segment_ids_BL[b, k] != 0
                back = positions_BL[b, q] - positions_BL[b, k]
                mask[b, q, k] = same and back >= 0 and (window is None or back < window)
    return mask


@pytest.mark.parametrize("window", [None, 3])
def test_rows_are_distributions_over_visible_keys_and_zero_elsewhere(window):
    cfg = make_cfg(sliding_window=window)
    out = forward(cfg, params_for(cfg), TOKENS_BL, positions_BL=POSITIONS_BL,
                  segment_ids_BL=SEGMENTS_BL, return_attention=True)  # fmt: skip
    probs_YBNLS = np.asarray(out.attention_YBNLS)
    Y, (B, L) = cfg.n_layers, SEGMENTS_BL.shape
    assert probs_YBNLS.shape == (Y, B, cfg.n_heads, L, L)
    assert probs_YBNLS.dtype == np.float32
    mask_1B1LS = visible(SEGMENTS_BL, POSITIONS_BL, window)[None, :, None]
    mask_YBNLS = np.broadcast_to(mask_1B1LS, probs_YBNLS.shape)
    assert np.all(probs_YBNLS[~mask_YBNLS] == 0.0)  # exactly zero where masked
    assert np.all(probs_YBNLS[mask_YBNLS] > 0.0)
    sums_YBNL = probs_YBNLS.sum(-1)
    has_keys_YBNL = np.broadcast_to(mask_YBNLS.any(-1), sums_YBNL.shape)
    assert has_keys_YBNL.any() and not has_keys_YBNL.all()  # real and padding queries
    np.testing.assert_allclose(sums_YBNL[has_keys_YBNL], 1.0, atol=1e-6)
    assert np.all(sums_YBNL[~has_keys_YBNL] == 0.0)  # padding queries see nothing


FEATURES = {
    "auto": {},  # xla_flash on CPU (choose_impl)
    "xla_flash": {"attention_impl": "xla_flash"},
    "xla": {"attention_impl": "xla"},
    "gqa_rope": {"n_kv_heads": 2, "pos_encoding": "rope", "norm": "rmsnorm"},
    "alibi": {"pos_encoding": "alibi"},
    "post_norm": {"norm_placement": "post"},
    "unrolled": {"scan_layers": False},
    "window_softcap_qknorm": {"sliding_window": 3, "attn_logit_softcap": 5.0, "qk_norm": True},
}


@pytest.mark.parametrize("name", list(FEATURES))
def test_logits_unchanged_by_return_attention(name):
    cfg = make_cfg(**FEATURES[name])
    params = params_for(cfg)
    kwargs = dict(positions_BL=POSITIONS_BL, segment_ids_BL=SEGMENTS_BL)
    plain = forward(cfg, params, TOKENS_BL, **kwargs)
    probed = forward(cfg, params, TOKENS_BL, return_attention=True, **kwargs)
    assert plain.attention_YBNLS is None
    assert probed.attention_YBNLS.shape == (cfg.n_layers, 2, cfg.n_heads, 12, 12)
    real_BL = SEGMENTS_BL != 0  # padding rows' outputs are meaningless under any backend
    np.testing.assert_allclose(
        np.asarray(probed.logits_BLV)[real_BL], np.asarray(plain.logits_BLV)[real_BL],
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip


def layer_norm(x_LD, scale_D, bias_D, eps):
    mean_L1 = x_LD.mean(-1, keepdims=True)
    var_L1 = ((x_LD - mean_L1) ** 2).mean(-1, keepdims=True)
    return (x_LD - mean_L1) / np.sqrt(var_L1 + eps) * scale_D + bias_D


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_probabilities_equal_softmax_recomputed_by_hand(n_kv_heads):
    """Every layer: its input from the forward's hidden states (layer 0: the embeddings,
    also rebuilt by hand), then LayerNorm, q = x Wq, k = x Wk, softmax(q k^T / sqrt(H))
    under the causal mask, each query head n reading key head n // (N / K)."""
    cfg = make_cfg(n_kv_heads=n_kv_heads)
    params = params_for(cfg)
    tokens_L = TOKENS_BL[0]
    out = forward(cfg, params, tokens_L[None], return_hidden_states=True, return_attention=True)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    L, N, H = len(tokens_L), cfg.n_heads, cfg.head_size
    embed_LD = p["token_embed"][tokens_L] + p["pos_embed"][:L]
    np.testing.assert_allclose(np.asarray(out.hidden_states[0, 0]), embed_LD, atol=1e-6)
    blocks = p["blocks"]
    for y in range(cfg.n_layers):
        x_LD = np.asarray(out.hidden_states[y, 0], np.float64)
        norm = blocks["attn_norm"]
        h_LD = layer_norm(x_LD, norm["scale"][y], norm["bias"][y], cfg.norm_eps)
        q_LNH = np.einsum("ld,dnh->lnh", h_LD, blocks["attn"]["q"]["w"][y])
        k_LKH = np.einsum("ld,dkh->lkh", h_LD, blocks["attn"]["k"]["w"][y])
        k_LNH = np.repeat(k_LKH, N // cfg.kv_heads, axis=1)
        scores_NLS = np.einsum("lnh,snh->nls", q_LNH, k_LNH) / np.sqrt(H)
        scores_NLS = np.where(np.tril(np.ones((L, L), bool)), scores_NLS, -np.inf)
        expected_NLS = np.exp(scores_NLS - scores_NLS.max(-1, keepdims=True))
        expected_NLS /= expected_NLS.sum(-1, keepdims=True)
        np.testing.assert_allclose(np.asarray(out.attention_YBNLS[y, 0]), expected_NLS, atol=1e-6)


def test_refused_with_a_kv_cache():
    cfg = make_cfg()
    with pytest.raises(ValueError, match="KV cache"):
        forward(cfg, params_for(cfg), TOKENS_BL, cache=init_cache(cfg, 2, 16),
                return_attention=True)  # fmt: skip


def test_refused_for_an_arch_without_attention():
    cfg = make_cfg(arch="gru")
    with pytest.raises(ValueError, match="arch='gru' has no attention"):
        forward(cfg, params_for(cfg), TOKENS_BL, return_attention=True)


def test_refused_with_prompt_tuning():
    cfg = make_cfg()
    extras = Extras(prompt_PD=jnp.zeros((3, cfg.d_model)))
    with pytest.raises(ValueError, match="prompt / prefix tuning"):
        forward(cfg, params_for(cfg), TOKENS_BL, extras=extras, return_attention=True)


def test_attention_probs_names_a_bad_head_split():
    q_BLNH, k_BSKH = jnp.zeros((1, 4, 3, 8)), jnp.zeros((1, 4, 2, 8))
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        attention_probs(q_BLNH, k_BSKH)


def test_refused_with_attention_dropout():
    cfg = make_cfg(attn_dropout=0.1)
    with pytest.raises(ValueError, match="without attention dropout"):
        forward(cfg, params_for(cfg), TOKENS_BL, dropout_key=jax.random.key(0),
                return_attention=True)  # fmt: skip
