"""RNN, LSTM and GRU language models (`model.arch: rnn | lstm | gru`) and their state cache.

The recurrent baselines of the "why Transformers" lesson, built like torch's `nn.RNN`,
`nn.LSTM` and `nn.GRU` (cells and weight mapping in `rnn_cells.py`) so weights copy 1:1:
token embedding [V, D] -> n_layers stacked cells of hidden width H = D -> logits through the
tied embedding or an lm_head [D, V] (a recurrent LM in the manner of Mikolov et al., 2010,
and Zaremba et al., 2014, arXiv:1409.2329).

Design choices:
* The input projection x W_ih of every timestep is one matmul before the time scan; the
  `lax.scan` over time then carries only the recurrent matmul h W_hh (Appleyard et al.,
  2016, arXiv:1604.01946, the cuDNN RNN optimisation).
* Params (shape letters in rnn_cells.py): `w_ih0` [D, Z, G, H] feeds layer 0; `w_ih`
  [Y-1, Z*H, Z, G, H] the layers above (absent with one layer); `w_hh` [Y, H, Z, G, H];
  `bias_ih`, `bias_hh` [Y, Z, G, H] ("bias" in the name keeps them out of weight decay).
  Layer 0 is kept apart because a bidirectional layer above reads 2H features (torch's
  layout), so only layers 1.. share a shape; those run under a `lax.scan` over layers.
* Dropout as torch's `dropout=`: `resid_dropout` on each layer's output except the last;
  `embed_dropout` on the embedding output. Nothing else (no recurrent dropout).
* Packed rows: a change of segment id inside a row resets the state to zero at that token;
  padding (segment 0) leaves the state unchanged. Positions are ignored: order is implicit.
* Decoding and truncated BPTT share `RecurrentCache` (h, and c for the LSTM, per layer): a
  call continues each row from the cached state and returns the final one in `out.cache`.
  The state is fixed-size, so `max_len` means nothing and `rollback` cannot forget tokens.
* `rnn_bidirectional`: each layer also reads right to left; its output is the forward and
  backward states concatenated, [B, L, 2H] (torch's `bidirectional=True`). That model sees
  the future, so it is an encoder: `encode()` (or `__call__` with return_logits=False), no
  logits, no lm_head, no cache. A classifier reads `encode(...).hidden_BLD` and pools it,
  e.g. the forward half at each row's last valid token with the backward half at its first
  (torch's h_n), then a linear [2H, classes] it owns.
* `params_from_torch` loads a torch RNN's state dict into our layout (the parity tests and
  bench/recurrent.py use it). The Transformer's fields (heads, positions, norms, MLP,
  scan_layers, remat) mean nothing here and are ignored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from llm.config import ModelConfig
from llm.model.layers import dropout, normal, param
from llm.model.outputs import ModelOutput
from llm.model.rnn_cells import (
    GATES,
    project,
    run_layer,
    state_dtype,
    step_masks,
    torch_to_ours,
    uniform_init,
)
from llm.typing import Array


@struct.dataclass
class RecurrentCache:
    """h_YBH: each layer's hidden state; c_YBH: the LSTM's cell state (None for rnn / gru);
    lengths_B: int32, tokens each row has consumed (padding not counted). The states are
    float32 (or wider: `rnn_cells.state_dtype`)."""

    h_YBH: Array
    c_YBH: Array | None
    lengths_B: Array

    @property
    def batch(self) -> int:
        return self.h_YBH.shape[1]

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int) -> RecurrentCache:
        """Zero state for `batch` rows: the start of every document."""
        if not cfg.recurrent or cfg.rnn_bidirectional:
            raise ValueError(
                f"a RecurrentCache needs a unidirectional rnn / lstm / gru model, got "
                f"arch={cfg.arch!r} rnn_bidirectional={cfg.rnn_bidirectional}"
            )
        if cfg.kv_cache_dtype != "auto":
            raise ValueError(
                f"model.kv_cache_dtype={cfg.kv_cache_dtype!r} quantizes a Transformer's keys and "
                f"values; a {cfg.arch} caches its float32 state: use kv_cache_dtype=auto"
            )
        shape, dtype = (cfg.n_layers, batch, cfg.d_model), state_dtype(cfg.dtype)
        c = jnp.zeros(shape, dtype) if cfg.arch == "lstm" else None  # its own buffer: donatable
        return cls(jnp.zeros(shape, dtype), c, jnp.zeros((batch,), jnp.int32))

    def layer_state(self, dtype) -> tuple[Array, Array | None]:
        """(h, c) as [Y, Z=1, B, H] in `state_dtype(dtype)`: the model's starting state."""
        return jax.tree.map(
            lambda a: a[:, None].astype(state_dtype(dtype)), (self.h_YBH, self.c_YBH)
        )

    def advance(self, final: tuple[Array, Array | None], segment_ids_BL: Array) -> RecurrentCache:
        """The cache after a call that ended in `final` ([Y, 1, B, H] pair) and consumed the
        valid (segment id != 0) tokens of `segment_ids_BL`."""
        h_YBH, c_YBH = jax.tree.map(lambda a: a[:, 0], final)
        return RecurrentCache(
            h_YBH, c_YBH, self.lengths_B + (segment_ids_BL != 0).sum(-1, dtype=jnp.int32)
        )

    def select_rows(self, rows_R: Array) -> RecurrentCache:
        """The state of rows `rows_R`, in that order (repeats allowed)."""
        take = lambda a: None if a is None else jnp.take(a, rows_R, axis=1)  # noqa: E731
        return RecurrentCache(take(self.h_YBH), take(self.c_YBH), self.lengths_B[rows_R])

    def put_rows(self, rows_R: Array, other: RecurrentCache) -> RecurrentCache:
        """Row rows_R[r] replaced by row r of `other`; out-of-range indices dropped."""
        same_kind = (other.c_YBH is None) == (self.c_YBH is None)
        if not same_kind or other.h_YBH.shape[0] != self.h_YBH.shape[0]:
            raise ValueError("put_rows: the two RecurrentCaches come from different models")

        def put(big, small, axis):
            if big is None:
                return None
            return big.at[(slice(None),) * axis + (rows_R,)].set(small, mode="drop")

        return RecurrentCache(
            put(self.h_YBH, other.h_YBH, 1),
            put(self.c_YBH, other.c_YBH, 1),
            put(self.lengths_B, other.lengths_B, 0),
        )

    def rollback(self, lengths_B: Array) -> RecurrentCache:
        """Itself when no row shrinks; a recurrent state keeps no history to cut back to, so
        a shrinking row (or lengths only known inside `jit`) is a ValueError."""
        refuse_shrink("RecurrentCache", "a recurrent state", lengths_B, self.lengths_B)
        return self


def refuse_shrink(cache: str, state: str, lengths_B: Array, current_B: Array) -> None:
    """The rollback of a cache whose state keeps no history (RNNs, SSMs): a ValueError when a
    row would shrink, or when the lengths are only known inside `jit`."""
    if isinstance(lengths_B, jax.core.Tracer) or isinstance(current_B, jax.core.Tracer):
        raise ValueError(
            f"{cache}.rollback cannot check lengths inside jit; {state} cannot be rolled "
            "back (speculative decoding needs a Transformer target)"
        )
    shrinks = np.asarray(lengths_B) < np.asarray(current_B)
    if shrinks.any():
        raise ValueError(
            f"{cache}.rollback: rows {np.flatnonzero(shrinks).tolist()} would shrink, but "
            f"{state} keeps no history (speculative decoding and re-scoring the last token "
            "need a Transformer target)"
        )


class RecurrentLM(nnx.Module):
    """A stacked rnn / lstm / gru language model (or, bidirectional, an encoder)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        if not cfg.recurrent:
            raise ValueError(f"RecurrentLM needs model.arch rnn, lstm or gru, got {cfg.arch!r}")
        self.cfg = cfg
        V, D, Y, pdt = cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.param_dtype
        Z, G, H = self.directions, GATES[cfg.arch], cfg.d_model
        cell = uniform_init(H)
        self.token_embed = param(rngs, normal(cfg.init_std), (V, D), ("vocab", "embed"), pdt)
        self.w_ih0 = param(rngs, cell, (D, Z, G, H), ("embed", None, None, "mlp"), pdt)
        above = ("layers", "embed", None, None, "mlp")
        self.w_ih = param(rngs, cell, (Y - 1, Z * H, Z, G, H), above, pdt) if Y > 1 else None
        self.w_hh = param(rngs, cell, (Y, H, Z, G, H), ("layers", "embed", None, None, "mlp"), pdt)
        bias_axes = ("layers", None, None, "mlp")
        self.bias_ih = param(rngs, cell, (Y, Z, G, H), bias_axes, pdt)
        self.bias_hh = param(rngs, cell, (Y, Z, G, H), bias_axes, pdt)
        head = not cfg.tie_embeddings and not cfg.rnn_bidirectional
        self.lm_head = (
            param(rngs, normal(cfg.init_std), (D, V), ("embed", "vocab"), pdt) if head else None
        )

    @property
    def directions(self) -> int:
        return 2 if self.cfg.rnn_bidirectional else 1

    @staticmethod
    def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> RecurrentCache:
        """Zero state for `batch` rows; `max_len` is unused (the state does not grow)."""
        del max_len
        return RecurrentCache.init(cfg, batch)

    def __call__(
        self,
        tokens_BL: Array,
        positions_BL: Array | None = None,
        segment_ids_BL: Array | None = None,
        dropout_key: Array | None = None,
        return_logits: bool = True,
        return_hidden_states: bool = False,
        input_embeddings_BLD: Array | None = None,
        cache: RecurrentCache | None = None,
        layers: tuple | None = None,
        extras=None,
    ) -> ModelOutput:
        """The LM forward (the Transformer's signature; positions are ignored). With `cache`,
        each row continues from the cached state and `out.cache` holds the final state and
        lengths; dropout may still be given (truncated BPTT). hidden_states: [Y+1, B, L, D],
        the (dropped-out) embedding then each layer's output."""
        _refuse(layers, extras)
        if self.cfg.rnn_bidirectional:
            if return_logits or cache is not None:
                raise ValueError(
                    "a bidirectional recurrent model reads the future, so it is an encoder: no "
                    "next-token logits and no cache; call encode() (or return_logits=False)"
                )
            return self.encode(tokens_BL, segment_ids_BL, dropout_key, return_hidden_states,
                               input_embeddings_BLD)  # fmt: skip
        if cache is not None and not isinstance(cache, RecurrentCache):
            raise TypeError(
                f"a recurrent model decodes with a RecurrentCache, got {type(cache).__name__}"
            )
        B, L = tokens_BL.shape
        segment_ids_BL = _segments(segment_ids_BL, B, L)
        state = None if cache is None else cache.layer_state(self.cfg.dtype)
        x0_BLD, y_BLD, out_YBLD, final = self._run(
            tokens_BL, segment_ids_BL, dropout_key, input_embeddings_BLD, state
        )
        new_cache = None if cache is None else cache.advance(final, segment_ids_BL)
        hidden_states = None
        if return_hidden_states:
            hidden_states = jnp.concatenate([x0_BLD[None], out_YBLD])
        logits = self.logits(y_BLD) if return_logits else None
        return ModelOutput(logits, y_BLD, hidden_states, cache=new_cache)

    def encode(
        self,
        tokens_BL: Array,
        segment_ids_BL: Array | None = None,
        dropout_key: Array | None = None,
        return_hidden_states: bool = False,
        input_embeddings_BLD: Array | None = None,
    ) -> ModelOutput:
        """Hidden states without logits: hidden_BLD [B, L, Z*D] (bidirectional: the forward
        then the backward state at each token, torch's layout); hidden_states [Y, B, L, Z*D],
        the layers' outputs (for Z = 2 the D-wide embedding does not fit beside them)."""
        B, L = tokens_BL.shape
        segment_ids_BL = _segments(segment_ids_BL, B, L)
        _, y_BLD, out_YBLD, _ = self._run(
            tokens_BL, segment_ids_BL, dropout_key, input_embeddings_BLD, None
        )
        return ModelOutput(None, y_BLD, out_YBLD if return_hidden_states else None)

    def logits(self, hidden_BLD: Array) -> Array:
        """Output layer: the tied embedding (transposed) or the lm_head."""
        if self.cfg.rnn_bidirectional:
            raise ValueError("a bidirectional recurrent model is an encoder: it has no logits")
        dtype = self.cfg.dtype
        if self.lm_head is None:
            table_VD = self.token_embed.get_value().astype(dtype)
            return jnp.einsum("BLD,VD->BLV", hidden_BLD.astype(dtype), table_VD)
        head_DV = self.lm_head.get_value().astype(dtype)
        return jnp.einsum("BLD,DV->BLV", hidden_BLD.astype(dtype), head_DV)

    def _run(self, tokens_BL, segment_ids_BL, key, x_BLD, state):
        """(embedding after dropout, last layer's output, every layer's output [Y, B, L, Z*H],
        final state (h_YZBH, c_YZBH or None)) starting from `state` ([Y, Z, B, H] arrays;
        None: zeros)."""
        cfg = self.cfg
        B, Y, Z, H = tokens_BL.shape[0], cfg.n_layers, self.directions, cfg.d_model
        if state is None:
            zeros = jnp.zeros((Y, Z, B, H), state_dtype(cfg.dtype))
            state = (zeros, zeros if cfg.arch == "lstm" else None)
        if x_BLD is None:
            x_BLD = jnp.take(self.token_embed.get_value(), tokens_BL, axis=0)
        keys_Y = None if key is None else jax.random.split(key, Y)
        x0_BLD = dropout(x_BLD.astype(cfg.dtype), cfg.embed_dropout, _key(keys_Y, 0))
        masks = _direction_masks(segment_ids_BL, Z)
        first = (self.w_ih0[...], self.w_hh[0], self.bias_ih[0], self.bias_hh[0])
        y0_BLI, (h_ZBH, c_ZBH) = self._layer(x0_BLD, first, _at(state, 0), masks)
        if Y == 1:
            return x0_BLD, y0_BLI, y0_BLI[None], (h_ZBH[None], _at_new(c_ZBH))

        def body(x_BLI, layer):
            weights, layer_state, layer_key = layer
            x_BLI = dropout(x_BLI, cfg.resid_dropout, layer_key)  # the layer below's output
            y_BLI, final = self._layer(x_BLI, weights, layer_state, masks)
            return y_BLI, (y_BLI, final)

        above = (self.w_ih[...], self.w_hh[1:], self.bias_ih[1:], self.bias_hh[1:])
        rest = jax.tree.map(lambda a: a[1:], state)
        y_BLI, (ys_YBLI, (h_YZBH, c_YZBH)) = jax.lax.scan(
            body, y0_BLI, (above, rest, None if keys_Y is None else keys_Y[1:])
        )
        out_YBLI = jnp.concatenate([y0_BLI[None], ys_YBLI])
        h_YZBH = jnp.concatenate([h_ZBH[None], h_YZBH])
        c_YZBH = None if c_ZBH is None else jnp.concatenate([c_ZBH[None], c_YZBH])
        return x0_BLD, y_BLI, out_YBLI, (h_YZBH, c_YZBH)

    def _layer(self, x_BLI, weights, state, masks):
        """One layer, every direction: (output [B, L, Z*H], final (h_ZBH, c_ZBH))."""
        w_ih_IZGH, w_hh_KZGH, b_ih_ZGH, b_hh_ZGH = weights
        dtype, acc = self.cfg.dtype, state_dtype(self.cfg.dtype)
        x_ZBLI = _directions(x_BLI.astype(dtype), self.directions)
        xp_ZBLGH = project(x_ZBLI, w_ih_IZGH.astype(dtype), acc)
        xp_ZBLGH = xp_ZBLGH + b_ih_ZGH.astype(acc)[:, None, None]
        out_ZBLH, final = run_layer(self.cfg.arch, xp_ZBLGH, w_hh_KZGH, b_hh_ZGH, state, masks,
                                    dtype)  # fmt: skip
        return _undirections(out_ZBLH).astype(dtype), final


def params_from_torch(cfg: ModelConfig, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our recurrent params (w_ih0, w_ih, w_hh, bias_ih, bias_hh) from a torch `nn.RNN` /
    `nn.LSTM` / `nn.GRU` state dict as numpy arrays (`{k: v.numpy() for k, v in
    module.state_dict().items()}`; built with input and hidden size d_model, num_layers
    n_layers, bias=True, and bidirectional as `cfg.rnn_bidirectional`). The embedding and
    output layer are not part of a torch RNN: the caller fills them."""
    Y, Z, G = cfg.n_layers, 2 if cfg.rnn_bidirectional else 1, GATES[cfg.arch]
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    per = {}
    for k in range(Y):
        for z in range(Z):
            suffix = f"_l{k}" + ("_reverse" if z else "")
            missing = [n + suffix for n in names if n + suffix not in weights]
            if missing:
                raise ValueError(f"params_from_torch: torch weights lack {missing} ({cfg.arch=})")
            per[k, z] = torch_to_ours(*(weights[n + suffix] for n in names), G)

    def stack(name, layers):
        return np.stack([np.stack([per[k, z][name] for z in range(Z)], axis=-3) for k in layers])

    out = {
        "w_ih0": stack("w_ih", [0])[0],
        "w_hh": stack("w_hh", range(Y)),
        "bias_ih": stack("b_ih", range(Y)),
        "bias_hh": stack("b_hh", range(Y)),
    }
    if Y > 1:
        out["w_ih"] = stack("w_ih", range(1, Y))
    return out


def _refuse(layers, extras) -> None:
    """The Transformer-only arguments a recurrent model cannot honour."""
    if layers is not None:
        raise ValueError("a recurrent model has no per-layer decode layout (`layers`)")
    if extras is not None and any(
        v is not None for v in (extras.prompt_PD, extras.prefix_k_YPKH, extras.adapters)
    ):
        raise ValueError(
            "prompt tuning, prefix tuning and bottleneck adapters (extras) are Transformer-only; "
            "a recurrent model got some"
        )


def _segments(segment_ids_BL: Array | None, B: int, L: int) -> Array:
    if segment_ids_BL is None:
        return jnp.ones((B, L), jnp.int32)
    if segment_ids_BL.shape != (B, L):
        raise ValueError(f"segment_ids_BL has shape {segment_ids_BL.shape}; tokens are {(B, L)}")
    return segment_ids_BL


def _key(keys_Y: Array | None, i: int) -> Array | None:
    return None if keys_Y is None else keys_Y[i]


def _at(state, i: int):
    """Layer i of an (h, c) pair of [Y, ...] arrays (c may be None)."""
    return jax.tree.map(lambda a: a[i], state)


def _at_new(c_ZBH: Array | None) -> Array | None:
    return None if c_ZBH is None else c_ZBH[None]


def _directions(x_BLI: Array, Z: int) -> Array:
    """[Z, B, L, I]: each direction's sequence in its reading order (backward: reversed)."""
    if Z == 1:
        return x_BLI[None]
    return jnp.stack([x_BLI, jnp.flip(x_BLI, axis=1)])


def _undirections(out_ZBLH: Array) -> Array:
    """[B, L, Z*H]: each direction's outputs back in token order, forward first."""
    if out_ZBLH.shape[0] == 1:
        return out_ZBLH[0]
    return jnp.concatenate([out_ZBLH[0], jnp.flip(out_ZBLH[1], axis=1)], axis=-1)


def _direction_masks(segment_ids_BL: Array, Z: int) -> tuple[Array, Array]:
    """(reset_ZBL, valid_ZBL) of `rnn_cells.step_masks`, each direction in reading order."""
    return jax.tree.map(
        lambda *m: jnp.stack(m), *(step_masks(s) for s in _directions(segment_ids_BL, Z))
    )
