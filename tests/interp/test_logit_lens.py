"""The logit lens: its ends are the model's own output and a readout of the embeddings, its
ranks agree with a NumPy argsort, its top tokens with a full sort."""

import jax
import numpy as np
import pytest

from llm.config import ModelConfig
from llm.interp.logit_lens import logit_lens, next_token_ranks, top_tokens
from llm.model import forward, init_params, readout

CFG = ModelConfig(
    vocab_size=61, d_model=32, n_layers=3, n_heads=4, d_ff=48, max_seq_len=16, init_std=0.1
)


@pytest.fixture(scope="module")
def lens():
    params = init_params(CFG, jax.random.key(0))
    tokens_BL = np.asarray(jax.random.randint(jax.random.key(1), (2, 9), 0, CFG.vocab_size))
    return params, tokens_BL, logit_lens(CFG, params, tokens_BL)


def log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_shape_and_normalised(lens):
    _, tokens_BL, logprobs_YBLV = lens
    assert logprobs_YBLV.shape == (CFG.n_layers + 1, *tokens_BL.shape, CFG.vocab_size)
    np.testing.assert_allclose(np.exp(logprobs_YBLV).sum(-1), 1.0, atol=1e-5)


def test_last_layer_is_the_models_log_softmax(lens):
    params, tokens_BL, logprobs_YBLV = lens
    logits_BLV = forward(CFG, params, tokens_BL).logits_BLV
    np.testing.assert_allclose(logprobs_YBLV[-1], log_softmax(logits_BLV), atol=1e-5)


def test_first_layer_reads_the_embeddings(lens):
    """Index 0: token + learned position embeddings, rebuilt by hand, through readout."""
    params, tokens_BL, logprobs_YBLV = lens
    L = tokens_BL.shape[1]
    embed_BLD = params["token_embed"][tokens_BL] + params["pos_embed"][:L]
    expected_BLV = log_softmax(readout(CFG, params, embed_BLD))
    np.testing.assert_allclose(logprobs_YBLV[0], expected_BLV, atol=1e-5)
    assert not np.allclose(logprobs_YBLV[0], logprobs_YBLV[-1], atol=1e-2)  # layers differ


def test_next_token_ranks_match_numpy_argsort(lens):
    _, tokens_BL, logprobs_YBLV = lens
    ranks_YBL1 = next_token_ranks(logprobs_YBLV, tokens_BL)
    Y, B, L, _ = logprobs_YBLV.shape
    assert ranks_YBL1.shape == (Y, B, L - 1)
    order_YBLV = np.argsort(-logprobs_YBLV, axis=-1, kind="stable")
    for y, b, l in np.ndindex(Y, B, L - 1):
        expected = int(np.nonzero(order_YBLV[y, b, l] == tokens_BL[b, l + 1])[0][0])
        assert ranks_YBL1[y, b, l] == expected, (y, b, l)
    assert len(np.unique(ranks_YBL1)) > 3  # not a constant


def test_top_tokens_match_a_full_sort(lens):
    _, _, logprobs_YBLV = lens
    ids_YBLK = top_tokens(logprobs_YBLV, 5)
    expected_YBLK = np.argsort(-logprobs_YBLV, axis=-1, kind="stable")[..., :5]
    np.testing.assert_array_equal(ids_YBLK, expected_YBLK)


def test_bad_inputs_are_named(lens):
    _, tokens_BL, logprobs_YBLV = lens
    with pytest.raises(ValueError, match="lens covers"):
        next_token_ranks(logprobs_YBLV, tokens_BL[:, :-1])
    with pytest.raises(ValueError, match="1 <= k <= V=61"):
        top_tokens(logprobs_YBLV, 0)
    with pytest.raises(TypeError, match="ModelConfig"):
        logit_lens({"model": CFG}, None, tokens_BL)
