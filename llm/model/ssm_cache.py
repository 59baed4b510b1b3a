"""The decoding state of a Mamba model (`model.arch: mamba`), behind the cache protocol.

A Mamba layer needs two things to continue a sequence (Gu & Dao, 2023, arXiv:2312.00752,
section 3.4, "recurrent mode"): the last W = ssm_conv - 1 inputs of its causal convolution
and its SSM state h [E, N]. Both are fixed-size, so a step costs the same at any length and
`max_len` only sizes the key/value cache of a hybrid's attention layers (a `KVCache` over
those layers alone). A state keeps no history: `rollback` cannot forget tokens, so it is
refused when a row would shrink (speculative decoding needs a Transformer target; beam
search reruns the prompt instead, as for the RNN baselines).

Letters: Y mamba layers, B rows, W cached conv inputs, E inner channels, N state size.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
from flax import struct

from llm.config import ModelConfig
from llm.model import kv_cache
from llm.model.kv_cache import KVCache
from llm.model.recurrent import refuse_shrink
from llm.typing import Array


def inner_width(cfg: ModelConfig) -> int:
    """E, the width the SSM runs at: ssm_expand * d_model."""
    return cfg.ssm_expand * cfg.d_model


def dt_rank(cfg: ModelConfig) -> int:
    """R, the rank of the step-size projection: `ssm_dt_rank`, or ceil(d_model / 16) (the
    paper's choice)."""
    return cfg.ssm_dt_rank or math.ceil(cfg.d_model / 16)


def layer_kinds(cfg: ModelConfig) -> tuple[str, ...]:
    """ "mamba" or "attention" per layer: with ssm_attention_every = k, layers k-1, 2k-1, ...
    (every k-th, counting from 1) are Transformer blocks, the rest Mamba blocks."""
    k = cfg.ssm_attention_every
    return tuple("attention" if k and (i + 1) % k == 0 else "mamba" for i in range(cfg.n_layers))


@struct.dataclass
class SSMCache:
    """conv_YBWE: each mamba layer's last W convolution inputs (activation dtype);
    ssm_YBEN: each mamba layer's state (float32); kv: the attention layers' `KVCache`
    (None without attention); lengths_B: int32, tokens each row has consumed."""

    conv_YBWE: Array
    ssm_YBEN: Array
    kv: KVCache | None
    lengths_B: Array

    @property
    def batch(self) -> int:
        return self.conv_YBWE.shape[1]

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, max_len: int) -> SSMCache:
        """Zero state for `batch` rows (the start of every document); `max_len` sizes the
        attention layers' keys and values, if any (0: no KVCache, the forward's own start)."""
        if cfg.arch != "mamba":
            raise ValueError(f"an SSMCache needs model.arch='mamba', got {cfg.arch!r}")
        kinds = layer_kinds(cfg)
        Y, A = kinds.count("mamba"), kinds.count("attention")
        E, W = inner_width(cfg), cfg.ssm_conv - 1
        conv = jnp.zeros((Y, batch, W, E), cfg.dtype)
        ssm = jnp.zeros((Y, batch, E, cfg.ssm_state), jnp.promote_types(cfg.dtype, jnp.float32))
        kv = None
        if A and max_len:  # a KVCache over the A attention layers alone
            attn_cfg = dataclasses.replace(cfg, n_layers=A, ssm_attention_every=1)
            kv = kv_cache.init_cache(attn_cfg, batch, max_len)
        return cls(conv, ssm, kv, jnp.zeros((batch,), jnp.int32))

    def select_rows(self, rows_R: Array) -> SSMCache:
        """The state of rows `rows_R`, in that order (repeats allowed)."""
        take = lambda a: jnp.take(a, rows_R, axis=1)  # noqa: E731
        kv = None if self.kv is None else self.kv.select_rows(rows_R)
        return SSMCache(take(self.conv_YBWE), take(self.ssm_YBEN), kv, self.lengths_B[rows_R])

    def put_rows(self, rows_R: Array, other: SSMCache) -> SSMCache:
        """Row rows_R[r] replaced by row r of `other`; out-of-range indices dropped."""
        if other.conv_YBWE.shape[::2] != self.conv_YBWE.shape[::2] or (
            (other.kv is None) != (self.kv is None)
        ):
            raise ValueError("put_rows: the two SSMCaches come from different models")
        put = lambda big, small: big.at[:, rows_R].set(small, mode="drop")  # noqa: E731
        kv = None if self.kv is None else self.kv.put_rows(rows_R, other.kv)
        return SSMCache(
            put(self.conv_YBWE, other.conv_YBWE),
            put(self.ssm_YBEN, other.ssm_YBEN),
            kv,
            self.lengths_B.at[rows_R].set(other.lengths_B, mode="drop"),
        )

    def rollback(self, lengths_B: Array) -> SSMCache:
        """Itself when no row shrinks; an SSM state keeps no history to cut back to, so a
        shrinking row (or lengths only known inside `jit`) is a ValueError."""
        refuse_shrink("SSMCache", "a Mamba state", lengths_B, self.lengths_B)
        return self

    def advance(self, conv_YBWE, ssm_YBEN, kv: KVCache | None, segment_ids_BL) -> SSMCache:
        """The cache after a call that consumed the valid (segment id != 0) tokens."""
        n_B = (segment_ids_BL != 0).sum(-1, dtype=jnp.int32)
        return SSMCache(conv_YBWE.astype(self.conv_YBWE.dtype), ssm_YBEN, kv, self.lengths_B + n_B)
