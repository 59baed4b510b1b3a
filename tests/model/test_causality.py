"""No information flows from the future, nor across packed-sequence boundaries.

Gradients are taken with respect to the input embeddings (`input_embeddings_BLD`), so a
zero gradient means position t's logits cannot depend on anything at positions > t.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.model import forward
from tests.model.conftest import make_cfg, params_for

# Each switch appears in at least one variant; variants combine switches to keep compiles few.
VARIANTS = {
    "learned_mha": {},
    "sinusoidal_post": {"pos_encoding": "sinusoidal", "norm_placement": "post"},
    "rope_llama3_gqa_window": {
        "pos_encoding": "rope",
        "rope_scaling": "llama3",
        "rope_scaling_factor": 8.0,
        "n_kv_heads": 2,
        "sliding_window": 3,
    },
    "alibi_mqa_qknorm_jax": {
        "pos_encoding": "alibi",
        "n_kv_heads": 1,
        "qk_norm": True,
        "attention_impl": "jax",
    },
    "nope_softcap_rms_swiglu": {
        "pos_encoding": "none",
        "attn_logit_softcap": 2.0,
        "norm": "rmsnorm",
        "activation": "swiglu",
    },
}


def dependence(cfg, params, segment_ids=None, positions=None, L=10):
    """dep[t, s] = sum |d logits[t] / d embedding[s]|: how much output t depends on input s."""
    embeds = jax.random.normal(jax.random.key(1), (1, L, cfg.d_model))
    tokens = jnp.zeros((1, L), jnp.int32)

    def logit_sums_L(e_LD):
        out = forward(
            cfg,
            params,
            tokens,
            input_embeddings_BLD=e_LD[None],
            segment_ids_BL=segment_ids,
            positions_BL=positions,
        )
        return out.logits_BLV[0].sum(-1)

    jacobian_LLD = jax.jit(jax.jacrev(logit_sums_L))(embeds[0])
    return np.asarray(jnp.abs(jacobian_LLD).sum(-1))


@pytest.mark.parametrize("name", VARIANTS)
def test_no_gradient_from_future_tokens(name):
    cfg = make_cfg(**VARIANTS[name])
    params = params_for(cfg)
    dep = dependence(cfg, params)
    window = cfg.sliding_window or 10**9
    for t in range(dep.shape[0]):
        assert np.all(dep[t, t + 1 :] == 0.0), (name, t, dep[t])
        # Everything inside the causal window does matter (the mask is not too strict).
        assert np.all(dep[t, max(0, t - window + 1) : t + 1] > 0.0), (name, t, dep[t])


@pytest.mark.parametrize("name", ["learned_mha", "rope_llama3_gqa_window"])
def test_packed_segments_do_not_interact(name):
    cfg = make_cfg(**VARIANTS[name])
    params = params_for(cfg)
    segment_ids = jnp.array([[1, 1, 1, 1, 2, 2, 2, 2, 0, 0]])
    positions = jnp.array([[0, 1, 2, 3, 0, 1, 2, 3, 0, 0]])
    dep = dependence(cfg, params, segment_ids, positions)
    assert np.all(dep[4:8, :4] == 0.0), dep  # the second document sees nothing of the first
    assert np.all(dep[:4, 4:] == 0.0), dep  # nor the first anything after it
    assert np.all(np.diag(dep)[:8] > 0.0), dep


@pytest.mark.parametrize("name", ["learned_mha", "alibi_mqa_qknorm_jax"])
def test_packed_document_equals_document_alone(name):
    cfg = make_cfg(**VARIANTS[name])
    params = params_for(cfg)
    doc_a = jnp.array([5, 9, 11, 3])
    doc_b = jnp.array([7, 2, 8, 8, 1])
    packed = jnp.concatenate([doc_a, doc_b, jnp.zeros(1, jnp.int32)])[None]
    segment_ids = jnp.array([[1] * 4 + [2] * 5 + [0]])
    positions = jnp.array([[0, 1, 2, 3, 0, 1, 2, 3, 4, 0]])
    packed_logits = forward(
        cfg, params, packed, segment_ids_BL=segment_ids, positions_BL=positions
    ).logits_BLV
    alone_b = forward(cfg, params, doc_b[None]).logits_BLV
    alone_a = forward(cfg, params, doc_a[None]).logits_BLV
    np.testing.assert_allclose(packed_logits[0, 4:9], alone_b[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed_logits[0, :4], alone_a[0], rtol=1e-5, atol=1e-5)
