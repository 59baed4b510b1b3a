"""The simple sampler used after training: a full forward pass for every new token.

This is deliberately the plain path: no KV cache, so each token costs a forward over the
whole window (O(L^2) per sequence). It exists so a training run can show what it learned
with nothing but `forward`; the inference engine (KV cache, batching) replaces it for real
generation. The window is a fixed `max_seq_len` buffer so the forward compiles once; when
the text outgrows it, the window slides and positions restart from 0 at its left edge.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llm.model import forward
from llm.typing import Array, PyTree


@functools.partial(jax.jit, static_argnums=(0, 5))
def _next_token(
    model_cfg: Any,
    params: PyTree,
    window_1L: Array,
    t: Array,
    key: Array,
    top_k: int | None,
    temperature: Array,
    prefix_1L: Array | None = None,
) -> Array:
    """Samples the token after position t-1 of the window (greedy when temperature == 0).
    `prefix_1L`: a prefix-LM's bidirectional prompt tokens (llm/model/prefix_lm.py)."""
    out = forward(model_cfg, params, window_1L, prefix_BL=prefix_1L)
    logits_V = out.logits_BLV[0, t - 1].astype(jnp.float32)
    if top_k is not None:
        kth = jax.lax.top_k(logits_V, top_k)[0][-1]
        logits_V = jnp.where(logits_V < kth, -jnp.inf, logits_V)
    greedy = jnp.argmax(logits_V)
    sampled = jax.random.categorical(key, logits_V / jnp.maximum(temperature, 1e-6))
    return jnp.where(temperature > 0, sampled, greedy)


def sample(
    model_cfg: Any,
    params: PyTree,
    tokenizer: Any,
    prompt: str = "",
    *,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int = 0,
) -> str:
    """Prompt + `max_new_tokens` sampled tokens, decoded (stops early at EOS).

    A prefix-LM (`model.prefix_lm`) reads BOS + prompt as its bidirectional prefix, as
    prefix-LM SFT trained it; generated tokens stay causal. Once the window slides, only the
    prompt tokens still inside it are prefix."""
    L = model_cfg.max_seq_len
    ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]
    n_prompt = len(ids)
    key = jax.random.key(seed)
    for _ in range(max_new_tokens):
        context = ids[-L:]
        window = np.full((1, L), tokenizer.pad_id, np.int32)
        window[0, : len(context)] = context
        key, sub = jax.random.split(key)
        t = jnp.asarray(len(context), jnp.int32)
        prefix = None
        if getattr(model_cfg, "prefix_lm", False):  # window index i holds ids[start + i]
            start = len(ids) - len(context)
            prefix = (np.arange(L) + start < n_prompt)[None]
        token = int(_next_token(model_cfg, params, window, t, sub, top_k, temperature, prefix))
        if token == tokenizer.eos_id:
            break
        ids.append(token)
    return tokenizer.decode(ids[1:])
