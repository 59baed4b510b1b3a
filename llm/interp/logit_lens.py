"""The logit lens (nostalgebraist, 2020, "interpreting GPT: the logit lens"): read the
residual stream after every block through the model's own final norm and output layer, as if
the network stopped there, and watch the next-token prediction form layer by layer.

Index 0 of the layer axis is the embedding output (before any block), index Y the last
block's output, whose readout is exactly the model's log-softmax. The lens reuses the
trained readout unchanged (no learned translators as in the "tuned lens", Belrose et al.,
2023, arXiv:2303.08112), so early layers of models that were not trained for it can read
poorly; that is part of what it shows.

Memory: the full lens holds (Y + 1) x B x L x V float32 log-probabilities (SmolLM2-135M on
one 32-token row: 31 x 32 x 49152 x 4 bytes = 195 MB).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from llm.config import ModelConfig
from llm.model import forward, readout
from llm.typing import Array, PyTree


@functools.partial(jax.jit, static_argnums=0)
def _lens(cfg: ModelConfig, params: PyTree, tokens_BL: Array) -> Array:
    hidden_YBLD = forward(
        cfg, params, tokens_BL, return_logits=False, return_hidden_states=True
    ).hidden_states
    logits_YBLV = jax.lax.map(lambda h_BLD: readout(cfg, params, h_BLD), hidden_YBLD)
    return jax.nn.log_softmax(logits_YBLV.astype(jnp.float32), axis=-1)


def logit_lens(cfg: ModelConfig, params: PyTree, tokens_BL: Array) -> np.ndarray:
    """logprobs_YBLV [Y + 1, B, L, V] (float32): the next-token log-probabilities read from
    the embeddings (index 0) and from each block's output (index y = after block y); the
    last equals log_softmax of the forward's logits. `cfg` is the ModelConfig."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"logit_lens takes the ModelConfig (cfg.model), got {type(cfg).__name__}")
    tokens_BL = jnp.asarray(tokens_BL, jnp.int32)
    if tokens_BL.ndim != 2:
        raise ValueError(f"tokens_BL must be [batch, length], got shape {tokens_BL.shape}")
    return np.asarray(_lens(cfg, params, tokens_BL))


def _check_logprobs(logprobs_YBLV) -> np.ndarray:
    x = np.asarray(logprobs_YBLV)
    if x.ndim != 4:
        raise ValueError(f"expected logprobs_YBLV [layers, B, L, V], got shape {x.shape}")
    return x


def next_token_ranks(logprobs_YBLV, tokens_BL) -> np.ndarray:
    """ranks_YBL1 [Y + 1, B, L - 1]: at each layer and position l < L - 1, the rank of the
    true next token tokens_BL[:, l + 1] among the vocabulary (0 = the layer's top choice;
    the number of ids with a strictly higher log-probability)."""
    x = _check_logprobs(logprobs_YBLV)
    tokens_BL = np.asarray(tokens_BL)
    if tokens_BL.shape != x.shape[1:3]:
        raise ValueError(
            f"tokens_BL has shape {tokens_BL.shape}, the lens covers [B, L] = {x.shape[1:3]}"
        )
    if tokens_BL.min() < 0 or tokens_BL.max() >= x.shape[-1]:
        raise ValueError(f"token ids must lie in [0, V={x.shape[-1]})")
    next_BL1 = tokens_BL[:, 1:]
    x_YBL1V = x[:, :, :-1]
    target_YBL1 = np.take_along_axis(x_YBL1V, next_BL1[None, :, :, None], axis=-1)
    return (x_YBL1V > target_YBL1).sum(axis=-1)


def top_tokens(logprobs_YBLV, k: int) -> np.ndarray:
    """ids_YBLK [Y + 1, B, L, k]: each layer's k most likely next tokens, most likely first."""
    x = _check_logprobs(logprobs_YBLV)
    if not 1 <= k <= x.shape[-1]:
        raise ValueError(f"top_tokens needs 1 <= k <= V={x.shape[-1]}, got {k=}")
    _, ids_YBLK = jax.lax.top_k(jnp.asarray(x), k)
    return np.asarray(ids_YBLK)
