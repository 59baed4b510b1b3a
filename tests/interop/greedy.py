"""A plain greedy decoder over `forward` (no KV cache): the reference path for parity tests.

The window is a fixed-length buffer so the forward compiles once; a causal model's logits at
position t do not depend on what follows, so the padding after the text changes nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from llm.model import forward


def greedy(cfg, params, prompt_ids: list[int], n_new: int, stop_ids=()) -> list[int]:
    """`n_new` argmax tokens after `prompt_ids` (fewer if a stop id is produced)."""
    window = len(prompt_ids) + n_new
    step = jax.jit(lambda p, x, t: jnp.argmax(forward(cfg, p, x).logits_BLV[0, t]))
    ids = list(prompt_ids)
    for _ in range(n_new):
        x = np.zeros((1, window), np.int32)
        x[0, : len(ids)] = ids
        token = int(step(params, x, len(ids) - 1))
        ids.append(token)
        if token in stop_ids:
            break
    return ids[len(prompt_ids) :]
