"""Pooling and sentence embeddings (llm/model/pooling.py): the poolings against NumPy, and
padding that changes nothing (a padded row pools what the sentence alone pools)."""

import jax.numpy as jnp
import numpy as np
import pytest

from llm.model import forward
from llm.model.pooling import (
    cls_pool,
    l2_normalize,
    mean_pool,
    sentence_embeddings,
    tokenize_sentences,
)
from llm.tokenizers.byte import ByteTokenizer
from tests.model.conftest import make_cfg, params_for
from tests.model.test_encoder import BERT


@pytest.fixture(scope="module")
def bert_cfg():
    return make_cfg(**BERT)


def test_pooling_matches_numpy():
    h = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    np.testing.assert_allclose(mean_pool(h, mask)[1], h[1, :2].mean(0), rtol=1e-6)
    np.testing.assert_allclose(mean_pool(h, mask)[0], h[0].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(cls_pool(h), h[:, 0])
    x = l2_normalize(jnp.asarray(h[:, 0]))
    np.testing.assert_allclose(np.linalg.norm(x, axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(x[0], h[0, 0] / np.linalg.norm(h[0, 0]), rtol=1e-6)


def test_padded_sentence_embeds_as_alone(bert_cfg, tokens_BL):
    """Right padding changes nothing: a short row pools what it pools alone."""
    params = params_for(bert_cfg)
    mask = jnp.ones_like(tokens_BL).at[1, 7:].set(0)
    padded = sentence_embeddings(bert_cfg, params, tokens_BL, mask)
    alone = sentence_embeddings(bert_cfg, params, tokens_BL[1:, :7], mask[1:, :7])
    np.testing.assert_allclose(padded[1], alone[0], atol=2e-6)
    cls = sentence_embeddings(bert_cfg, params, tokens_BL, mask, pooling="cls", normalize=False)
    h = forward(bert_cfg, params, tokens_BL, segment_ids_BL=mask).hidden_BLD
    np.testing.assert_allclose(cls, h[:, 0], atol=1e-6)


def test_tokenize_sentences_wraps_pads_and_cuts():
    tok = ByteTokenizer()
    tokens, mask, cut = tokenize_sentences(tok, ["ab", "hello"], max_len=5)
    bos, eos, pad = tok.bos_id, tok.eos_id, tok.pad_id
    a, b, h, e, l = (tok.encode(c)[0] for c in "abhel")
    np.testing.assert_array_equal(tokens, [[bos, a, b, eos, pad], [bos, h, e, l, eos]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert cut == 1  # "hello" lost its last 2 bytes: [EOS] is kept
