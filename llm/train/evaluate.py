"""Validation metrics: mean cross-entropy, perplexity and bits per byte.

Bits per byte (BPB) makes models with different tokenizers comparable: the summed negative
log-likelihood in nats, divided by ln 2 and by the number of UTF-8 bytes the predicted
tokens decode to (as in "The Pile", Gao et al. 2020). Bytes are counted by decoding each
row's masked target ids with the run's tokenizer, so special ids (which decode to nothing)
count zero bytes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llm.data.packing import count_bytes
from llm.model import forward
from llm.model.extras import Extras
from llm.ops.cross_entropy import cross_entropy_plain
from llm.typing import PyTree


@functools.partial(jax.jit, static_argnums=0)
def _eval_sums(
    model_cfg: Any, params: PyTree, batch: dict[str, jax.Array], extras: Extras | None
) -> jax.Array:
    out = forward(
        model_cfg,
        params,
        batch["inputs"],
        positions_BL=batch["positions"],
        segment_ids_BL=batch["segment_ids"],
        extras=extras,
    )
    _, ce = cross_entropy_plain(out.logits_BLV, batch["targets"], batch["loss_mask"])
    return ce


def evaluate(
    model_cfg: Any,
    params: PyTree,
    batches: Iterable[dict[str, np.ndarray]],
    tokenizer: Any,
    max_batches: int | None = None,
    put: Callable[[dict[str, np.ndarray]], dict[str, jax.Array]] | None = None,
    extras: Extras | None = None,
) -> dict[str, float]:
    """loss (nats/token), ppl, bpb and the token/byte/batch counts over `batches`.

    `put` turns a host batch into device arrays (default `jnp.asarray`); in a multi-process
    run it is `llm.data.device.to_device` and each process passes only its own rows: the
    loss sum is global (one jitted reduction), token and byte counts are summed over processes.
    `extras`: a PEFT run's prompt / prefix / adapters (`llm.train.trainable.forward_extras`).
    """
    if getattr(model_cfg, "arch", None) == "t5" or getattr(model_cfg, "prefix_lm", False):
        raise ValueError(
            "evaluate runs the decoder-only causal forward: model.arch=t5 / model.prefix_lm=true "
            "are evaluated by their loss (Seq2SeqLoss / SFTLoss .evaluate, as `llm eval` does)"
        )
    put = put or (lambda b: {k: jnp.asarray(v) for k, v in b.items()})
    nats, tokens, n_bytes, n = 0.0, 0.0, 0, 0
    for batch in batches:
        if max_batches is not None and n >= max_batches:
            break
        nats += float(_eval_sums(model_cfg, params, put(batch), extras))
        tokens += float(np.sum(batch["loss_mask"]))
        n_bytes += count_bytes(tokenizer, batch["targets"], batch["loss_mask"])
        n += 1
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        counts = multihost_utils.process_allgather(np.array([tokens, n_bytes], np.float64))
        tokens, n_bytes = float(counts[:, 0].sum()), int(counts[:, 1].sum())
    if tokens == 0:
        raise ValueError(
            "evaluation saw no unmasked tokens (empty or fully masked validation data)"
        )
    loss = nats / tokens
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 700.0)),
        "bpb": nats / math.log(2) / max(n_bytes, 1),
        "tokens": tokens,
        "bytes": n_bytes,
        "batches": n,
    }
