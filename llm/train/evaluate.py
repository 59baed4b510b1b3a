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

from llm.train.losses import cross_entropy_plain
from llm.typing import PyTree


@functools.partial(jax.jit, static_argnums=0)
def _eval_sums(model_cfg: Any, params: PyTree, batch: dict[str, jax.Array]) -> jax.Array:
    from llm.model import forward

    out = forward(
        model_cfg,
        params,
        batch["inputs"],
        positions_BL=batch["positions"],
        segment_ids_BL=batch["segment_ids"],
    )
    _, ce = cross_entropy_plain(out.logits_BLV, batch["targets"], batch["loss_mask"])
    return ce


def count_bytes(tokenizer: Any, targets_BL: np.ndarray, mask_BL: np.ndarray) -> int:
    """UTF-8 bytes the masked targets decode to, row by row."""
    total = 0
    for ids, mask in zip(targets_BL, mask_BL, strict=True):
        total += len(tokenizer.decode([int(i) for i in ids[mask > 0]]).encode("utf-8"))
    return total


def evaluate(
    model_cfg: Any,
    params: PyTree,
    batches: Iterable[dict[str, np.ndarray]],
    tokenizer: Any,
    max_batches: int | None = None,
    put: Callable[[dict[str, np.ndarray]], dict[str, jax.Array]] | None = None,
) -> dict[str, float]:
    """loss (nats/token), ppl, bpb and the token/byte/batch counts over `batches`.

    `put` turns a host batch into device arrays (default `jnp.asarray`); in a multi-process
    run it is `llm.data.device.to_device` and each process passes only its own rows: the
    loss sum is global (one jitted reduction), token and byte counts are summed over processes.
    """
    put = put or (lambda b: {k: jnp.asarray(v) for k, v in b.items()})
    nats, tokens, n_bytes, n = 0.0, 0.0, 0, 0
    for batch in batches:
        if max_batches is not None and n >= max_batches:
            break
        nats += float(_eval_sums(model_cfg, params, put(batch)))
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


def load_run(run_dir: str, step: int | None = None) -> tuple[Any, PyTree, Any, int]:
    """(config, params, tokenizer, step) of a run directory's newest (or `step`) checkpoint.

    The config is the resolved one saved beside the checkpoints, so the restored arrays are
    checked against exactly the shapes the run trained with. A directory made by
    `llm convert` (an imported model: `params/` beside `config.yaml`) loads as step 0.
    """
    from pathlib import Path

    if (Path(run_dir) / "params").is_dir():
        from llm.interop import load_model

        cfg, params, tokenizer = load_model(run_dir)
        return cfg, params, tokenizer, 0

    from llm.config import load_config
    from llm.model import init_params, logical_axes
    from llm.train.checkpoint import Checkpointer
    from llm.train.loop import load_tokenizer
    from llm.train.optim import make_optimizer
    from llm.train.state import init_state

    config_path = Path(run_dir) / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory: {config_path} is missing")
    cfg = load_config(config_path)
    abstract = jax.eval_shape(lambda: init_params(cfg.model, jax.random.key(0)))
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)
    tx = make_optimizer(cfg.optim, cfg.train.steps, params, logical_axes(cfg.model))
    like = init_state(params, tx, seed=0, spike_window=cfg.train.spike_window)
    ckpt = Checkpointer(run_dir, keep=cfg.train.keep_checkpoints, async_save=False)
    try:
        restored = ckpt.restore(like, step)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {Path(run_dir) / 'checkpoints'}")
    return cfg, restored.state.params, load_tokenizer(cfg.data.tokenizer), restored.step
