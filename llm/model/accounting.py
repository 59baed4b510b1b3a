"""Parameter counts, FLOPs per token and memory estimates, computed without allocating.

Counts come from `jax.eval_shape` of the real model (`abstract_params`), so they are exact
for any config. FLOPs follow Kaplan et al. (2020, arXiv:2001.08361) and Hoffmann et al.
(2022): a matmul with an (m x n) weight costs 2mn FLOPs per token forward, the backward
pass twice the forward, so training = 3 x forward. Attention adds, per layer and token,
2 * ctx * N * H for q k^T and the same for probs @ v, where ctx is the number of keys a
query sees. Causal masking halves the *useful* work: the average context over positions
1..L is (L + 1) / 2 keys, which is the "causal halving" used here (exactly, not L / 2).
A dense kernel that computes the whole L x L score matrix (XLA's reference attention)
does the work of ctx = L; `attention="dense"` counts that, and is what XLA's own cost
analysis reports. Element-wise work (norms, softmax, activations) is not counted.

The classical baselines (`model.arch`, llm/model/arch.py) have no attention; every weight
matrix of theirs is multiplied once per token (per direction for a bidirectional RNN), so
forward FLOPs per token = 2 x (the elements of every weight matrix: the params named with a
`w` (`BASELINE_MATMULS`) and the output layer, tied or not; lookups and biases excepted):
  ngram_mlp: 2 (C D F + (Y-1) F^2 + F V [+ C D V with direct connections]),
             C = ngram_context, F = d_ff, Y = n_layers tanh layers;
  rnn / lstm / gru: 2 (sum over layers and directions of G (I_l D + D D) + O V),
             G = 1 / 4 / 3 gates, I_l the layer's input width, O the output layer's width
  (the counts are read off the param tree, so they stay exact whatever the module holds).
Their saved activations per token and layer are estimated as the float values the backward
pass needs (`baseline_floats_per_token`), plus the float32 logits.

A mixture of experts (llm/model/moe.py) stores n_experts expert MLPs per layer but sends
each token through experts_per_token of them: `ParamCounts.active` (the "12.9B of 46.7B"
of Mixtral-8x7B, Jiang et al. 2024, arXiv:2401.04088) counts everything but the skipped
(E - k) / E of the routed experts, and the matmul FLOPs count the router, k experts and a
shared expert per token (dispatch work is not counted).

Activation memory follows Korthikanti et al. (2022, arXiv:2205.05198), Eq. 2, per layer:
s*b*d*(34 + 5*n*s/d) bytes at 16-bit with no recomputation; full recomputation keeps only
each block's input (2*s*b*d bytes per layer) plus one block's full activations. An MoE
layer adds an estimate of its routed experts' activations (`moe_floats_per_token`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Literal

import jax
import numpy as np
from jax.sharding import PartitionSpec

from llm.config import Config, ModelConfig
from llm.model import ssm_accounting
from llm.model.functional import abstract_params, logical_axes

EMBEDDING_KEYS = ("token_embed", "pos_embed", "type_embed", "lm_head")
# a baseline's weight matrices: `w` in its name (hidden_w, w_ih0, w_hh, ...) or the lm_head
BASELINE_MATMULS = re.compile(r"(^|_)w(_|$)|^lm_head$")
OPTIMIZER_STATE_FLOATS = {"adamw": 2, "lion": 1, "sgd": 1, "muon": 1, "adafactor": 0}


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    total: int
    embedding: int  # token embedding, learned positions and an untied output layer
    non_embedding: int
    active: int  # used per token: total less the (E - k) / E of routed experts a token skips


def param_counts(cfg: ModelConfig) -> ParamCounts:
    params = abstract_params(cfg)
    total = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    embedding = sum(math.prod(x.shape) for k in EMBEDDING_KEYS if k in params for x in [params[k]])
    skipped = expert_params(cfg) * (cfg.n_experts - cfg.experts_per_token) // max(cfg.n_experts, 1)
    return ParamCounts(total, embedding, total - embedding, active=total - skipped)


def expert_params(cfg: ModelConfig) -> int:
    """Parameters of the routed experts (a leaf with the logical axis `expert`), all layers;
    each token uses experts_per_token / n_experts of them (Mixtral: 2 of 8)."""
    if cfg.n_experts == 0:
        return 0
    specs = jax.tree.leaves(logical_axes(cfg), is_leaf=lambda x: isinstance(x, PartitionSpec))
    leaves = jax.tree.leaves(abstract_params(cfg))
    return sum(math.prod(x.shape) for x, s in zip(leaves, specs, strict=True) if "expert" in s)


def mean_context(seq_len: int, sliding_window: int | None, causal: bool = True) -> float:
    """Average number of keys a query attends to over positions 0..seq_len-1."""
    if not causal:
        return float(seq_len)
    visible = np.arange(1, seq_len + 1)
    if sliding_window is not None:
        visible = np.minimum(visible, sliding_window)
    return float(visible.mean())


def matmul_params(cfg: ModelConfig) -> int:
    """Weights used in a matmul per token: all block projections plus the output layer
    (for a baseline, its `BASELINE_MATMULS` and a tied output embedding)."""
    if cfg.arch == "mamba":  # llm/model/ssm_accounting.py
        return ssm_accounting.matmul_params(cfg)
    if cfg.arch == "t5":
        return _t5_matmul_params(cfg)
    if cfg.arch != "transformer":
        params = abstract_params(cfg)
        output = cfg.tie_embeddings and not cfg.rnn_bidirectional  # an encoder has no logits
        names = [k for k in params if BASELINE_MATMULS.search(k)]
        names += ["token_embed"] if output else []
        return sum(math.prod(x.shape) for k in names for x in jax.tree.leaves(params[k]))
    D, N, K, H, F = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size, cfg.d_ff
    attn = D * N * H * 2 + D * K * H * 2
    mlp = D * F * (3 if cfg.gated else 2)
    if cfg.n_experts:  # the router, k routed experts and the (gated) shared expert per token
        per_expert = D * (cfg.moe_d_ff or F) * (3 if cfg.gated else 2)
        shared = D * cfg.moe_shared_d_ff * (3 if cfg.gated else 2) + D * cfg.moe_shared_gate
        mlp = D * cfg.n_experts + cfg.experts_per_token * per_expert + shared
    return cfg.n_layers * (attn + mlp) + D * cfg.vocab_size


def forward_flops_per_token(
    cfg: ModelConfig, seq_len: int, attention: Literal["causal", "dense"] = "causal"
) -> float:
    """Forward FLOPs per token: 2 x matmul params + attention scores and mixing (none for
    the baselines, whose cost does not depend on `seq_len`)."""
    if cfg.arch == "mamba":  # conv + scan per layer, a hybrid's attention: ssm_accounting.py
        ctx = seq_len if attention == "dense" else mean_context(seq_len, cfg.sliding_window)
        return ssm_accounting.forward_flops_per_token(cfg, ctx)
    if cfg.arch == "t5":  # encoder self-attention over all S, decoder causal + cross over S
        ctx = mean_context(seq_len, None, causal=attention == "causal")
        if attention == "dense":
            ctx = float(seq_len)
        scores = cfg.n_layers * seq_len + cfg.decoder_layers * (ctx + seq_len)
        return 2 * matmul_params(cfg) + 4 * scores * cfg.n_heads * cfg.head_size
    if cfg.arch != "transformer":
        return 2.0 * matmul_params(cfg)
    # an encoder (model.causal=false) attends to all seq_len keys: no causal halving
    ctx = mean_context(seq_len, cfg.sliding_window, causal=attention == "causal" and cfg.causal)
    if attention == "dense":
        ctx = float(seq_len)
    attn = 4 * ctx * cfg.n_heads * cfg.head_size * cfg.n_layers
    return 2 * matmul_params(cfg) + attn


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward (2 x forward) = 3 x forward; remat recomputation not counted."""
    return 3 * forward_flops_per_token(cfg, seq_len)


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    params: int  # bytes of parameters in param_dtype
    grads: int  # bytes of gradients (param_dtype)
    optimizer: int  # bytes of optimizer state (float32 moments)
    activations: int  # bytes of activations saved for the backward pass

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations


def memory_estimate(cfg: Config) -> MemoryEstimate:
    m = cfg.model
    n = param_counts(m).total
    pbytes = np.dtype(m.param_dtype).itemsize
    moments = OPTIMIZER_STATE_FLOATS[cfg.optim.name]
    opt = 4 * n * moments
    if cfg.optim.name == "adafactor":  # factored second moments: one row + one column per matrix
        opt = 4 * sum(sum(x.shape[-2:]) for x in jax.tree.leaves(abstract_params(m)))
    return MemoryEstimate(
        params=n * pbytes, grads=n * pbytes, optimizer=opt, activations=activation_bytes(cfg)
    )


def activation_bytes(cfg: Config) -> int:
    """Saved activations for one micro-batch (Korthikanti et al., 2022, scaled to dtype)."""
    m, t = cfg.model, cfg.train
    s, b, d = t.seq_len, t.batch_size // t.grad_accum, m.d_model
    if m.arch == "t5":  # encoder layers, and decoder layers (+ cross-attention: ~1.5 layers)
        scale = np.dtype(m.dtype).itemsize / 2
        full_layer = s * b * d * (34 + 5 * m.n_heads * s / d) * scale
        return int((m.n_layers + 1.5 * m.decoder_layers) * full_layer + s * b * m.vocab_size * 4)
    if m.arch != "transformer":
        values = baseline_floats_per_token(m) * np.dtype(m.dtype).itemsize
        return int(s * b * (values + 4 * m.vocab_size))
    scale = np.dtype(m.dtype).itemsize / 2  # the paper's constants are for 16-bit
    full_layer = s * b * d * (34 + 5 * m.n_heads * s / d) * scale
    full_layer += s * b * moe_floats_per_token(m, s) * np.dtype(m.dtype).itemsize  # MoE: est.
    logits = s * b * m.vocab_size * 4  # float32 logits for the loss
    if m.remat == "none":
        per_layer_total = m.n_layers * full_layer
    elif m.remat == "full":
        per_layer_total = m.n_layers * 2 * s * b * d * scale + full_layer
    else:  # dots policies keep matmul outputs: about half of the unrecomputed activations
        per_layer_total = m.n_layers * full_layer / 2 + full_layer / 2
    return int(per_layer_total + logits)


def baseline_floats_per_token(m: ModelConfig) -> int:
    """Activations a baseline keeps per token for its backward pass (logits excepted):
    ngram_mlp: the window C D and each tanh layer's output F (plus [h; x] under direct);
    rnn / lstm / gru: per layer and direction the input, the G D gate pre-activations and the
    new state (h, and c for an LSTM). Remat is not applied to them."""
    if m.arch == "mamba":  # llm/model/ssm_accounting.py
        return ssm_accounting.floats_per_token(m)
    if m.arch == "ngram_mlp":
        window = m.ngram_context * m.d_model
        return window + m.n_layers * m.d_ff + (window + m.d_ff if m.ngram_direct else 0)
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[m.arch]
    state = 2 if m.arch == "lstm" else 1
    directions = 2 if m.rnn_bidirectional else 1
    per_layer = m.d_model * (directions + gates + state)
    return m.d_model + directions * m.n_layers * per_layer


def moe_floats_per_token(m: ModelConfig, seq_len: int) -> float:
    """An estimate of the values one MoE layer (llm/model/moe.py) keeps per token beyond the
    dense MLP's, for rows of `seq_len` tokens (0 for a dense model): the router's 2 E logits
    and probabilities, plus, with E experts of width F, k per token, model width D:
    dense dropless: every expert on every token, the [B, E, L, F] up/gate/activation
      tensors and the [B, E, L, D] outputs: E (3F + D);
    ragged dropless: the k gathered inputs, hidden and outputs: k (3F + 2D);
    capacity cf: k*cf slots per token in and out of the experts, k*cf (2D + 3F), plus the
      one-hot slot tensors [L, K, E, C] and dispatch/combine [L, E, C] (C = cf L k / E):
      cf k L (k + 2), which grows with the row length.
    Not counted: XLA's fusion may skip some of these, or keep more."""
    if not m.n_experts:
        return 0.0
    E, K, D = m.n_experts, m.experts_per_token, m.d_model
    F = m.moe_d_ff or m.d_ff
    router = 2 * E
    if m.capacity_factor is not None:
        cf = m.capacity_factor
        return router + K * cf * (2 * D + 3 * F) + cf * K * seq_len * (K + 2)
    if m.moe_dropless == "ragged":
        return router + K * (3 * F + 2 * D)
    return router + E * (3 * F + D)


def report(cfg: Config) -> str:
    """The dry-run table: counts, FLOPs per token and memory for one config."""
    m, L, batch = cfg.model, cfg.train.seq_len, cfg.train.batch_size
    counts, mem = param_counts(m), memory_estimate(cfg)
    fwd = forward_flops_per_token(m, L)
    rows = [
        ("parameters (total)", f"{counts.total:,}"),
        ("  embedding", f"{counts.embedding:,}"),
        ("  non-embedding", f"{counts.non_embedding:,}"),
        *([("parameters (active per token)", f"{counts.active:,}")] if m.n_experts else []),
        (f"forward FLOPs/token ({_flops_note(m, L)})", f"{fwd:.4g}"),
        ("training FLOPs/token (3x forward)", f"{3 * fwd:.4g}"),
        (f"training FLOPs/step (batch {batch})", f"{3 * fwd * L * batch:.4g}"),
        (f"params ({m.param_dtype})", _gib(mem.params)),
        ("gradients", _gib(mem.grads)),
        (f"optimizer state ({cfg.optim.name})", _gib(mem.optimizer)),
        (f"activations (remat={m.remat}, {m.dtype})", _gib(mem.activations)),
        ("total (global batch, unsharded)", _gib(mem.total)),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v:>18}" for k, v in rows)


def _t5_matmul_params(cfg: ModelConfig) -> int:
    """Matmul weights of one encoder token plus one decoder token (the per-token unit of an
    encoder-decoder here: a `train.seq_len` position has one of each when S = T = seq_len,
    as for seq2seq pairs; span corruption rows are shorter, S + T ~ 1.1 seq_len)."""
    D, N, H = cfg.d_model, cfg.n_heads, cfg.head_size
    attn = 4 * D * N * H
    mlp = D * cfg.d_ff * (3 if cfg.gated else 2)
    return cfg.n_layers * (attn + mlp) + cfg.decoder_layers * (2 * attn + mlp) + D * cfg.vocab_size


def _flops_note(m: ModelConfig, seq_len: int) -> str:
    if m.arch == "t5":
        return f"encoder-decoder, seq {seq_len} source + {seq_len} target"
    if m.arch == "mamba" and m.ssm_attention_every:
        return f"mamba hybrid, seq {seq_len}, causal"
    if m.arch != "transformer":
        return f"{m.arch}, no attention"
    return f"seq {seq_len}, {'causal' if m.causal else 'bidirectional'}"


def _gib(n: int) -> str:
    return f"{n / 2**30:,.3f} GiB"
