"""Bengio's neural n-gram language model (Bengio, Ducharme, Vincent & Jauvin, 2003, JMLR 3).

The logits at position t predict token t+1 from the C = `ngram_context` tokens t-C+1..t
(the token itself and the C-1 before it): an n-gram model with n = C + 1 whose table is a
neural network, the paper's answer to the curse of dimensionality of count-based n-grams.

Design choices (paper section 2 unless noted):
* Each context token is looked up in one shared embedding table C (`token_embed` [V, D]);
  the C embeddings are concatenated, x = [e(t-C+1); ...; e(t)] of width C*D.
* A tanh hidden layer, h = tanh(d + H x) of width F = d_ff. `n_layers` counts tanh layers:
  the paper has one; n_layers > 1 adds F -> F tanh layers after it (`deep_w`).
* Output y = b + U h (+ W x with `ngram_direct`: the paper's optional direct connections
  from the embeddings to the output, which it found to speed convergence). Softmax is the
  loss's. With `tie_embeddings` U is the embedding table transposed (Press & Wolf, 2017,
  arXiv:1608.05859), so the last tanh layer must be d_model wide (d_ff = d_model).
* Context slots before the start of the token's document (the row start, or a change of
  segment id in a packed row) hold one learned "empty" vector (`empty_embed` [D]) instead of
  a token: a document's first tokens never see another document, and the model learns what
  "no token here" means, as the paper pads the start of a text.
* `hidden_BLD`, the output layer's input, is h (width F), or [h; x] (width F + C*D) with
  direct connections, so `logits(hidden_BLD)` alone computes y (chunked losses call it).
* Initialisation: embeddings N(0, 1) (torch's nn.Embedding; the paper's C is free real
  vectors) and tanh-layer weights N(0, 1/fan_in) (LeCun et al., 1998, "Efficient BackProp"),
  so pre-activations start at unit scale, in tanh's responsive range, whatever C*D is: with
  `init_std` (0.02) everywhere the tanh layer started near zero and 60 steps did not beat
  a unigram model. The output (and direct) weights use `init_std`.
* Dropout: `embed_dropout` on x, `resid_dropout` on every tanh layer's output.
* Positions are ignored (the window is the model's only notion of order); `layers`,
  `extras` (PEFT inputs) and `return_hidden_states` mean nothing here and are refused.

Decoding state (`NgramCache`): every row's token history [B, S] and its length. A step only
needs the last C tokens, but keeping the history makes `rollback` exact (speculative decoding
drops drafted tokens by lowering the lengths, as with the KV cache) at 4 bytes per token.

Letters: B batch, L length, C context tokens, D d_model, F hidden width, V vocab, S cache
slots, Y hidden layers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from llm.config import ModelConfig
from llm.model.extras import Extras
from llm.model.layers import dropout, normal, param, zeros
from llm.model.outputs import ModelOutput
from llm.typing import Array


@struct.dataclass
class NgramCache:
    """tokens_BS: each row's tokens so far (slots past its length are garbage); lengths_B:
    tokens each row holds. Implements the `llm.model.cache.Cache` protocol."""

    tokens_BS: Array
    lengths_B: Array

    @property
    def max_len(self) -> int:
        return self.tokens_BS.shape[1]

    @property
    def batch(self) -> int:
        return self.tokens_BS.shape[0]

    def select_rows(self, rows_R: Array) -> NgramCache:
        return NgramCache(jnp.take(self.tokens_BS, rows_R, 0), jnp.take(self.lengths_B, rows_R))

    def put_rows(self, rows_R: Array, other: NgramCache) -> NgramCache:
        if other.max_len != self.max_len:
            raise ValueError(f"{other.max_len=} must equal this cache's {self.max_len=}")
        return NgramCache(
            self.tokens_BS.at[rows_R].set(other.tokens_BS, mode="drop"),
            self.lengths_B.at[rows_R].set(other.lengths_B, mode="drop"),
        )

    def rollback(self, lengths_B: Array) -> NgramCache:
        """The history is kept, so cutting rows back is lowering their lengths."""
        return self.replace(lengths_B=jnp.minimum(lengths_B, self.lengths_B).astype(jnp.int32))


class NeuralNgramLM(nnx.Module):
    """The neural n-gram model behind the Transformer's interface (`llm.model.arch`)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        V, D, F, C, pdt = cfg.vocab_size, cfg.d_model, cfg.d_ff, cfg.ngram_context, cfg.param_dtype
        if cfg.tie_embeddings and F != D:
            raise ValueError(
                f"model.arch=ngram_mlp with model.tie_embeddings=true reads the output layer "
                f"from the [vocab, d_model] embedding, so the last tanh layer must be d_model "
                f"wide: got d_ff={F}, d_model={D}; set model.d_ff={D} or tie_embeddings=false"
            )
        std, unit = cfg.init_std, normal(1.0)
        self.token_embed = param(rngs, unit, (V, D), ("vocab", "embed"), pdt)
        self.empty_embed = param(rngs, unit, (D,), ("embed",), pdt)
        fan_in = normal(1.0 / math.sqrt(C * D))
        self.hidden_w = param(rngs, fan_in, (C, D, F), (None, "embed", "mlp"), pdt)
        self.hidden_b = param(rngs, zeros, (F,), ("mlp",), pdt)
        Y = cfg.n_layers - 1
        deep = (Y, F, F), ("layers", None, "mlp")
        self.deep_w = param(rngs, normal(1.0 / math.sqrt(F)), *deep, pdt) if Y else None
        self.deep_b = param(rngs, zeros, (Y, F), ("layers", "mlp"), pdt) if Y else None
        tied = cfg.tie_embeddings
        self.lm_head = None if tied else param(rngs, normal(std), (F, V), (None, "vocab"), pdt)
        self.lm_bias = param(rngs, zeros, (V,), ("vocab",), pdt)
        direct = (C, D, V), (None, "embed", "vocab")
        self.direct_w = param(rngs, normal(std), *direct, pdt) if cfg.ngram_direct else None

    def __call__(
        self,
        tokens_BL: Array,
        positions_BL: Array | None = None,
        segment_ids_BL: Array | None = None,
        dropout_key: Array | None = None,
        return_logits: bool = True,
        return_hidden_states: bool = False,
        input_embeddings_BLD: Array | None = None,
        cache: NgramCache | None = None,
        layers: tuple | None = None,
        extras: Extras | None = None,
    ) -> ModelOutput:
        """Logits at t from tokens t-C+1..t of t's document. With a `cache` the tokens
        continue each cached row (right-padded: segment id 0 marks padding, which the cache
        does not keep) and `out.cache` holds them; positions are ignored either way."""
        _refuse(return_hidden_states, layers, extras)
        B, L = tokens_BL.shape
        if segment_ids_BL is None:
            segment_ids_BL = jnp.ones((B, L), jnp.int32)
        new_cache = None
        if cache is None:
            x_BLCD = self._window(tokens_BL, segment_ids_BL, input_embeddings_BLD)
        else:
            if input_embeddings_BLD is not None or dropout_key is not None:
                raise ValueError(
                    "ngram_mlp with a cache reads tokens and runs without dropout: pass "
                    "neither input_embeddings_BLD nor dropout_key"
                )
            x_BLCD, new_cache = self._cached_window(tokens_BL, segment_ids_BL, cache)
        hidden_BLD = self._hidden(x_BLCD, dropout_key)
        logits = self.logits(hidden_BLD) if return_logits else None
        return ModelOutput(logits_BLV=logits, hidden_BLD=hidden_BLD, cache=new_cache)

    def _hidden(self, x_BLCD: Array, key: Array | None) -> Array:
        """The tanh layers over the concatenated window (with it appended under direct)."""
        cfg, dt = self.cfg, self.cfg.dtype
        B, L, C, D = x_BLCD.shape
        n_keys = cfg.n_layers + 1
        keys = [None] * n_keys if key is None else jax.random.split(key, n_keys)
        x_BLK = dropout(x_BLCD.reshape(B, L, C * D), cfg.embed_dropout, keys[0])
        w_KF = self.hidden_w[...].astype(dt).reshape(C * D, -1)
        h_BLF = jnp.tanh(x_BLK @ w_KF + self.hidden_b[...].astype(dt))
        h_BLF = dropout(h_BLF, cfg.resid_dropout, keys[1])
        for i in range(cfg.n_layers - 1):
            w_FF, b_F = self.deep_w[i].astype(dt), self.deep_b[i].astype(dt)
            h_BLF = dropout(jnp.tanh(h_BLF @ w_FF + b_F), cfg.resid_dropout, keys[i + 2])
        if self.direct_w is None:
            return h_BLF
        return jnp.concatenate([h_BLF, x_BLK], axis=-1)

    def logits(self, hidden_BLD: Array) -> Array:
        """y = b + U h (+ W x): `hidden_BLD` is h, or [h; x] with direct connections."""
        dt = self.cfg.dtype
        hidden_BLD = hidden_BLD.astype(dt)
        if self.lm_head is None:
            U_FV = self.token_embed[...].astype(dt).T
        else:
            U_FV = self.lm_head[...].astype(dt)
        F = U_FV.shape[0]
        y_BLV = hidden_BLD[..., :F] @ U_FV + self.lm_bias[...].astype(dt)
        if self.direct_w is not None:
            W_KV = self.direct_w[...].astype(dt).reshape(-1, U_FV.shape[1])
            y_BLV = y_BLV + hidden_BLD[..., F:] @ W_KV
        return y_BLV

    def _window(self, tokens_BL, segment_ids_BL, input_embeddings_BLD) -> Array:
        """x_BLCD: slot c of position t holds the embedding of token t - (C-1) + c, or the
        empty vector where that lies before t's document (or the row)."""
        B, L = tokens_BL.shape
        C = self.cfg.ngram_context
        e_BLD = input_embeddings_BLD
        if e_BLD is None:
            e_BLD = jnp.take(self.token_embed[...], tokens_BL, axis=0)
        t_L = jnp.arange(L, dtype=jnp.int32)
        boundary_BL = (t_L == 0) | (segment_ids_BL != jnp.roll(segment_ids_BL, 1, axis=1))
        start_BL = jax.lax.cummax(jnp.where(boundary_BL, t_L, 0), axis=1)  # document start
        src_LC = t_L[:, None] - (C - 1) + jnp.arange(C, dtype=jnp.int32)
        valid_BLC = src_LC[None] >= start_BL[:, :, None]
        src_BLC = jnp.broadcast_to(jnp.clip(src_LC, 0), (B, L, C)).reshape(B, L * C)
        x_BLCD = jnp.take_along_axis(e_BLD, src_BLC[..., None], axis=1).reshape(B, L, C, -1)
        return self._fill_empty(x_BLCD, valid_BLC)

    def _cached_window(self, tokens_BL, segment_ids_BL, cache: NgramCache):
        """(x_BLCD, the cache with the step's valid tokens appended): the window of new
        token l (at position lengths_B + l) reads the history the step has just extended."""
        B, L = tokens_BL.shape
        C, S = self.cfg.ngram_context, cache.max_len
        valid_BL = segment_ids_BL != 0
        pos_BL = cache.lengths_B[:, None] + jnp.arange(L, dtype=jnp.int32)
        write_BL = jnp.where(valid_BL, pos_BL, S)  # padding goes out of range: dropped
        rows_B1 = jnp.arange(B)[:, None]
        history_BS = cache.tokens_BS.at[rows_B1, write_BL].set(tokens_BL, mode="drop")
        src_BLC = pos_BL[:, :, None] - (C - 1) + jnp.arange(C, dtype=jnp.int32)
        ctx_BLC = jnp.take_along_axis(history_BS, jnp.clip(src_BLC, 0, S - 1).reshape(B, -1), 1)
        x_BLCD = jnp.take(self.token_embed[...], ctx_BLC.reshape(B, L, C), axis=0)
        lengths_B = cache.lengths_B + valid_BL.sum(-1, dtype=jnp.int32)
        return self._fill_empty(x_BLCD, src_BLC >= 0), NgramCache(history_BS, lengths_B)

    def _fill_empty(self, x_BLCD: Array, valid_BLC: Array) -> Array:
        empty_D = self.empty_embed[...].astype(self.cfg.dtype)
        return jnp.where(valid_BLC[..., None], x_BLCD.astype(self.cfg.dtype), empty_D)

    @staticmethod
    def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> NgramCache:
        if cfg.kv_cache_dtype != "auto":
            raise ValueError(
                f"model.kv_cache_dtype={cfg.kv_cache_dtype!r} quantizes a Transformer's keys "
                "and values; ngram_mlp caches token ids: use kv_cache_dtype=auto"
            )
        tokens_BS = jnp.zeros((batch, max_len), jnp.int32)
        return NgramCache(tokens_BS, jnp.zeros((batch,), jnp.int32))


def _refuse(return_hidden_states: bool, layers, extras: Extras | None) -> None:
    """Transformer arguments with no meaning for this model, refused by name."""
    if return_hidden_states:
        raise ValueError(
            "ngram_mlp has no residual stream of equal-width layers: return_hidden_states "
            "(logit lens, probes) needs model.arch=transformer"
        )
    if layers is not None:
        raise ValueError("ngram_mlp has no Transformer blocks: `layers` (decode layout) is unused")
    if extras is not None and _uses(extras):
        raise ValueError(
            "prompt tuning, prefix tuning and bottleneck adapters (extras) act on a "
            "Transformer's embeddings, attention and blocks: model.arch=ngram_mlp has none"
        )


def _uses(extras: Extras) -> bool:
    """Whether `extras` carries any PEFT input (an empty `Extras()` is allowed)."""
    return extras.prompt_PD is not None or extras.prefix_k_YPKH is not None or bool(extras.adapters)
