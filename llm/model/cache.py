"""The decoding-cache protocol: what generation code may do with a model's cache.

The engine, beam search and speculative decoding hold a cache per batch of rows and pass it
to `llm.model.forward`, which returns the updated one in `out.cache`. Besides that they only
create one, read each row's length, gather rows, scatter rows into a running batch, and roll
rows back; they never read its arrays. So a model with another decoding state (a sliding
window ring buffer, an SSM or RNN state) plugs in by implementing these five operations,
without touching `llm/inference/`. Today every model uses the `KVCache` of `kv_cache.py`,
stored in the activation dtype or, with `model.kv_cache_dtype=int8`, as int8 codes and a
scale per cached vector (the config field is the one switch: `init_cache` reads it).

Every operation is a pure function of arrays, usable under `jit`, and keeps the cache's
shapes static; in a step that donates the cache, the scatters update it in place.
"""

from __future__ import annotations

from typing import Protocol, Self, runtime_checkable

from llm.config import ModelConfig
from llm.model.arch import model_class
from llm.model.kv_cache import KVCache
from llm.typing import Array


@runtime_checkable
class Cache(Protocol):
    """A batch of B rows of decoding state, each the context of one sequence."""

    @property
    def lengths_B(self) -> Array:
        """int32 [B]: tokens each row holds (the next token's position)."""
        ...

    def select_rows(self, rows_R: Array) -> Self:
        """The cache of rows `rows_R`, in that order (repeats allowed): beam search reorders
        beams after their parents this way."""
        ...

    def put_rows(self, rows_R: Array, other: Self) -> Self:
        """This cache with row rows_R[r] replaced by row r of `other` (same max length);
        out-of-range indices are dropped, so callers pad `rows_R` to a static size."""
        ...

    def rollback(self, lengths_B: Array) -> Self:
        """Each row cut back to its first min(lengths_B[b], current length) tokens, the
        rest forgotten (speculative decoding drops rejected drafts). Never extends a row."""
        ...


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> Cache:
    """An empty cache of `batch` rows with room for `max_len` tokens each, of the kind this
    model decodes with (the one place that chooses it; its storage dtype from
    `cfg.kv_cache_dtype`): a KVCache for the Transformer, the baselines' own state else."""
    if cfg.arch == "transformer" and not cfg.causal:
        raise ValueError(
            "model.causal=false is a bidirectional encoder: every token sees the whole input, "
            "so it does not decode token by token (no KV cache, no generation)"
        )
    if cfg.n_experts and cfg.capacity_factor is not None:
        raise ValueError(
            f"model.capacity_factor={cfg.capacity_factor}: an MoE with a capacity counts the "
            "tokens of each call, so decoding step by step would route unlike the full forward; "
            "decode with a dropless MoE: model.capacity_factor null"
        )
    if cfg.arch == "transformer":
        return KVCache.init(cfg, batch, max_len)
    return model_class(cfg).init_cache(cfg, batch, max_len)
