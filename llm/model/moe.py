"""The mixture-of-experts MLP: a router sends each token to k of E expert MLPs.

Shape letters: B batch, L length, D model width, E experts, K experts per token (top-k),
C capacity slots per expert and row, F expert hidden width, T tokens (B * L), A assignments
(T * K).

Design choices (config fields in `ModelConfig`, block "mixture of experts"):
* Top-k routing (Shazeer et al., 2017, arXiv:1701.06538). Router logits are computed in
  float32 (Switch's "selective precision", Fedus et al., 2022, arXiv:2101.03961). Gates are a
  softmax over all E logits (Mixtral, arXiv:2401.04088; Qwen2-MoE) or independent sigmoids
  (DeepSeek-V3, arXiv:2412.19437); the k kept weights are optionally rescaled to sum to one
  (`moe_renormalize`: Mixtral and DeepSeek-V3 do, Qwen1.5-MoE does not).
* Dropless (`capacity_factor: null`, MegaBlocks, Gale et al., 2022, arXiv:2211.15841): every
  assignment is computed. `moe_dropless: dense` runs every expert on every token and masks the
  combine (E/K times the useful FLOPs, plain matmuls; it shards over the expert axis with no
  all-to-all); `ragged` sorts the assignments by expert and runs `jax.lax.ragged_dot` (a grouped
  GEMM on GPU/TPU; JAX lowers it on CPU to a masked dense product over all E groups).
* Capacity (GShard, Lepikhin et al., 2020, arXiv:2006.16668; Switch): each expert takes at
  most C = ceil(capacity_factor * N * K / E) assignments per batch row (N: the row's
  non-padding tokens), queued in token order (all k choices of token t before token t+1), so
  a token's drops depend on earlier tokens only (causal); an assignment past capacity is
  dropped and its token keeps only the other experts' outputs (nothing at all: the residual
  alone). The group is the row: documents packed in one row share its capacity. Dispatch and
  combine are one-hot einsums to and from [B, E, C, D] (C for the whole row), the layout
  expert parallelism shards (`expert` on E; the all-to-all is GSPMD's, llm/sharding/rules.py).
  C counts each call's tokens, so a capacity MoE cannot decode step by step: `init_cache`
  refuses it.
* Padding (segment id 0) takes no capacity slot, is left out of both auxiliary losses, and
  gets no routed output (zero; the shared expert still runs on it).
* Auxiliary losses in `LayerOutput.aux_losses`, already weighted by the config: load
  balancing `moe_lb` = E * sum_e f_e P_e (Switch eq. 4; f_e the fraction of the T*K
  assignments routed to e, P_e the mean router probability; 1 for uniform routing) and the
  router z-loss `moe_z` = mean_t logsumexp(logits_t)^2 (ST-MoE, Zoph et al., 2022,
  arXiv:2202.08906), both means over the non-padding tokens. The dropped-assignment count
  is not a loss: `route` returns it.
* Shared experts (DeepSeekMoE, Dai et al., 2024, arXiv:2401.06066; Qwen2-MoE): a dense MLP
  every token passes through, optionally scaled by sigmoid(x . w_gate) (Qwen2-MoE).

`moe_reference` beside the fast paths loops over experts, each applied to every token.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from llm.config import ModelConfig
from llm.config.model import MOE_FIELDS
from llm.model.layers import Linear, normal, param
from llm.model.mlp import ACTIVATIONS, MLP
from llm.model.outputs import LayerOutput
from llm.sharding.constraints import constrain
from llm.typing import Array

DISPATCHED = ("moe_batch", "expert", None, "act_embed")  # [B, E, C, D] logical axes


class ExpertWeights(nnx.Module):
    """One weight per expert, stacked: `w` [E, ...] with the `expert` logical axis first."""

    def __init__(self, shape: tuple[int, ...], axes: tuple[str, ...], *, std, dtype, rngs):
        self.w = param(rngs, normal(std), shape, axes, dtype)


@struct.dataclass
class Routing:
    """Where each token goes. experts_BLK / weights_BLK: its top-k experts and their combine
    weights; keep_BLK: the assignment fits its expert's capacity (all True when dropless);
    slot_BLK: its slot in the expert's buffer; probs_BLE: router probabilities (sigmoid ones
    normalised per token); logits_BLE: float32 router logits; valid_BL: not padding (padding
    is never kept)."""

    experts_BLK: Array
    weights_BLK: Array
    keep_BLK: Array
    slot_BLK: Array
    probs_BLE: Array
    logits_BLE: Array
    valid_BL: Array

    @property
    def dropped(self) -> Array:
        """How many token-to-expert assignments were dropped for lack of capacity."""
        return jnp.sum(~self.keep_BLK & self.valid_BL[..., None])


class MoE(nnx.Module):
    """Router, E stacked experts (gated like the dense MLP when the activation is) and an
    optional shared expert. Params: router/w [D, E], up/w and gate/w [E, D, F], down/w
    [E, F, D], shared/* (a dense `MLP`), shared_gate/w [D, 1]."""

    def __init__(self, cfg: ModelConfig, *, out_std: float, rngs: nnx.Rngs):
        E, D, F = cfg.n_experts, cfg.d_model, cfg.moe_d_ff or cfg.d_ff
        self.cfg = cfg
        common = dict(param_dtype=cfg.param_dtype, rngs=rngs)
        self.router = Linear("TD,DE->TE", (D, E), ("embed", None), bias_shape=None,
                             std=cfg.init_std, dtype=jnp.float32, **common)  # fmt: skip
        w = dict(std=cfg.init_std, dtype=cfg.param_dtype, rngs=rngs)
        self.up = ExpertWeights((E, D, F), ("expert", "embed", "mlp"), **w)
        self.gate = ExpertWeights((E, D, F), ("expert", "embed", "mlp"), **w) if cfg.gated else None
        self.down = ExpertWeights((E, F, D), ("expert", "mlp", "embed"), **{**w, "std": out_std})
        self.shared = (
            MLP(dense_config(cfg, cfg.moe_shared_d_ff), out_std=out_std, rngs=rngs)
            if cfg.moe_shared_d_ff
            else None
        )
        self.shared_gate = None if not cfg.moe_shared_gate else (
            Linear("TD,DO->TO", (D, 1), ("embed", None), bias_shape=None,
                   std=cfg.init_std, dtype=cfg.dtype, **common)
        )  # fmt: skip

    def route(self, x_BLD: Array, segment_ids_BL: Array | None = None) -> Routing:
        """Top-k routing of every token, with capacity (if configured) applied; tokens of
        segment 0 (padding) are routed nowhere."""
        cfg = self.cfg
        B, L, _ = x_BLD.shape
        logits_BLE = self.router(x_BLD.reshape(B * L, -1)).reshape(B, L, -1)
        valid_BL = None if segment_ids_BL is None else segment_ids_BL != 0
        return route(cfg, logits_BLE, valid_BL)

    def __call__(self, x_BLD: Array, segment_ids_BL: Array | None = None) -> LayerOutput:
        """The MoE branch; `segment_ids_BL` (None: no padding) marks padding with 0."""
        cfg = self.cfg
        routing = self.route(x_BLD, segment_ids_BL)
        if cfg.capacity_factor is not None:
            y_BLD = self._capacity(x_BLD, routing)
        elif cfg.moe_dropless == "ragged":
            y_BLD = self._ragged(x_BLD, routing)
        else:
            y_BLD = self._dense(x_BLD, routing)
        if self.shared is not None:
            y_BLD = y_BLD + self._shared(x_BLD)
        return LayerOutput(y_BLD.astype(cfg.dtype), aux_losses=aux_losses(cfg, routing))

    def weights(self) -> dict[str, Array]:
        """The expert weights in the computation dtype: up, down and (gated) gate."""
        dt = self.cfg.dtype
        out = {"up": self.up.w[...].astype(dt), "down": self.down.w[...].astype(dt)}
        if self.gate is not None:
            out["gate"] = self.gate.w[...].astype(dt)
        return out

    def _experts(self, x_BECD: Array) -> Array:
        """Each expert's MLP on its own slots: [B, E, C, D] -> [B, E, C, D]."""
        w, act = self.weights(), ACTIVATIONS[self.cfg.activation]
        h_BECF = jnp.einsum("BECD,EDF->BECF", x_BECD, w["up"])
        if "gate" in w:
            h_BECF = act(jnp.einsum("BECD,EDF->BECF", x_BECD, w["gate"])) * h_BECF
        else:
            h_BECF = act(h_BECF)
        return jnp.einsum("BECF,EFD->BECD", h_BECF, w["down"])

    def _capacity(self, x_BLD: Array, r: Routing) -> Array:
        """GShard dispatch into [B, E, C, D] (C = capacity), the experts, weighted combine."""
        E, C = self.cfg.n_experts, capacity(self.cfg, x_BLD.shape[1])
        slots_BLKEC = (
            jax.nn.one_hot(r.experts_BLK, E, dtype=x_BLD.dtype)[..., None]
            * jax.nn.one_hot(r.slot_BLK, C, dtype=x_BLD.dtype)[..., None, :]
            * r.keep_BLK[..., None, None]
        )
        dispatch_BLEC = jnp.sum(slots_BLKEC, axis=2)
        combine_BLEC = jnp.einsum("BLKEC,BLK->BLEC", slots_BLKEC, r.weights_BLK.astype(x_BLD.dtype))
        x_BECD = constrain(jnp.einsum("BLEC,BLD->BECD", dispatch_BLEC, x_BLD), DISPATCHED)
        y_BECD = constrain(self._experts(x_BECD), DISPATCHED)
        return jnp.einsum("BLEC,BECD->BLD", combine_BLEC, y_BECD)

    def _dense(self, x_BLD: Array, r: Routing) -> Array:
        """Dropless by brute force: every expert on every token (one slot per token, C = L),
        combined with the routing weights (zero for experts a token was not sent to)."""
        x_BECD = constrain(jnp.broadcast_to(x_BLD[:, None], _dense_shape(x_BLD, r)), DISPATCHED)
        y_BELD = constrain(self._experts(x_BECD), DISPATCHED)
        return jnp.einsum("BLE,BELD->BLD", combine_weights(r).astype(x_BLD.dtype), y_BELD)

    def _ragged(self, x_BLD: Array, r: Routing) -> Array:
        """Dropless by sorting: assignments grouped by expert, one `ragged_dot` per matrix."""
        B, L, D = x_BLD.shape
        E, K = self.cfg.n_experts, self.cfg.experts_per_token
        expert_A = r.experts_BLK.reshape(-1)
        order_A = jnp.argsort(expert_A, stable=True)
        token_A = order_A // K
        sizes_E = jnp.bincount(expert_A, length=E).astype(jnp.int32)
        x_AD = x_BLD.reshape(B * L, D)[token_A]
        w, act = self.weights(), ACTIVATIONS[self.cfg.activation]
        h_AF = jax.lax.ragged_dot(x_AD, w["up"], sizes_E)
        if "gate" in w:
            h_AF = act(jax.lax.ragged_dot(x_AD, w["gate"], sizes_E)) * h_AF
        else:
            h_AF = act(h_AF)
        y_AD = jax.lax.ragged_dot(h_AF, w["down"], sizes_E)
        weights_A = jnp.where(r.keep_BLK, r.weights_BLK, 0.0).reshape(-1)[order_A]
        y_AD = y_AD * weights_A[:, None].astype(y_AD.dtype)
        return jnp.zeros((B * L, D), y_AD.dtype).at[token_A].add(y_AD).reshape(B, L, D)

    def _shared(self, x_BLD: Array) -> Array:
        y_BLD = self.shared(x_BLD).hidden_BLD
        if self.shared_gate is None:
            return y_BLD
        B, L, D = x_BLD.shape
        g_BL1 = jax.nn.sigmoid(self.shared_gate(x_BLD.reshape(B * L, D))).reshape(B, L, 1)
        return g_BL1.astype(y_BLD.dtype) * y_BLD


def _dense_shape(x_BLD: Array, r: Routing) -> tuple[int, ...]:
    B, L, D = x_BLD.shape
    return (B, r.probs_BLE.shape[-1], L, D)


def dense_config(cfg: ModelConfig, d_ff: int) -> ModelConfig:
    """The config of a dense MLP of width `d_ff` with `cfg`'s activation and dtypes."""
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.name in MOE_FIELDS}
    return dataclasses.replace(cfg, d_ff=d_ff, n_experts=0, **defaults)


def capacity(cfg: ModelConfig, length: int) -> int:
    """Slots per expert and batch row of `length` tokens: ceil(capacity_factor * L * K / E)
    (GShard)."""
    E, K = cfg.n_experts, cfg.experts_per_token
    return max(1, math.ceil(cfg.capacity_factor * length * K / E))


def row_capacity(cfg: ModelConfig, valid_BL: Array) -> Array:
    """[B]: each row's capacity from its count of non-padding tokens (a lookup in a table of
    `capacity` for 0..L tokens, so it rounds exactly like it)."""
    table_N = jnp.array([capacity(cfg, n) for n in range(valid_BL.shape[1] + 1)], jnp.int32)
    return table_N[jnp.sum(valid_BL, axis=1)]


def route(cfg: ModelConfig, logits_BLE: Array, valid_BL: Array | None = None) -> Routing:
    """Top-k experts, their weights, and which assignments are kept: those of valid tokens
    (`valid_BL`, False for padding; None: every token is valid) within the capacity, if any."""
    logits_BLE = logits_BLE.astype(jnp.float32)
    if valid_BL is None:
        valid_BL = jnp.ones(logits_BLE.shape[:2], bool)
    if cfg.moe_gate == "softmax":
        scores_BLE = jax.nn.softmax(logits_BLE, axis=-1)
        probs_BLE = scores_BLE
    else:
        scores_BLE = jax.nn.sigmoid(logits_BLE)
        probs_BLE = scores_BLE / jnp.sum(scores_BLE, axis=-1, keepdims=True)
    weights_BLK, experts_BLK = jax.lax.top_k(scores_BLE, cfg.experts_per_token)
    if cfg.moe_renormalize:
        weights_BLK = weights_BLK / jnp.sum(weights_BLK, axis=-1, keepdims=True)
    slot_BLK = _slots(experts_BLK, valid_BL, cfg.n_experts)
    keep_BLK = jnp.broadcast_to(valid_BL[..., None], experts_BLK.shape)
    if cfg.capacity_factor is not None:
        keep_BLK = keep_BLK & (slot_BLK < row_capacity(cfg, valid_BL)[:, None, None])
    return Routing(experts_BLK, weights_BLK, keep_BLK, slot_BLK, probs_BLE, logits_BLE, valid_BL)


def _slots(experts_BLK: Array, valid_BL: Array, n_experts: int) -> Array:
    """Each assignment's position in its expert's queue within its row, in token order: all
    k choices of token t before any of token t + 1, so a future token never takes an earlier
    one's slot (GShard's first-then-second-choice order would let it: not causal). Padding
    takes no slot."""
    B, L, K = experts_BLK.shape
    onehot_BAE = jax.nn.one_hot(experts_BLK.reshape(B, L * K), n_experts, dtype=jnp.int32)
    onehot_BAE = onehot_BAE * jnp.repeat(valid_BL, K, axis=1)[..., None].astype(jnp.int32)
    queue_BAE = jnp.cumsum(onehot_BAE, axis=1) - 1
    return jnp.sum(queue_BAE * onehot_BAE, -1).reshape(B, L, K)


def combine_weights(r: Routing) -> Array:
    """[B, L, E]: each token's weight on each expert (0 where not routed or dropped)."""
    E = r.probs_BLE.shape[-1]
    kept_BLK = jnp.where(r.keep_BLK, r.weights_BLK, 0.0)
    return jnp.einsum("BLKE,BLK->BLE", jax.nn.one_hot(r.experts_BLK, E), kept_BLK)


def aux_losses(cfg: ModelConfig, r: Routing) -> dict[str, Array]:
    """The weighted load-balancing and z losses of one layer (only those with weight > 0)."""
    losses = {}
    if cfg.moe_lb_weight > 0:
        lb = load_balance_loss(r.experts_BLK, r.probs_BLE, r.valid_BL)
        losses["moe_lb"] = cfg.moe_lb_weight * lb
    if cfg.moe_z_weight > 0:
        losses["moe_z"] = cfg.moe_z_weight * z_loss(r.logits_BLE, r.valid_BL)
    return losses


def _valid_mean(x_BL: Array, valid_BL: Array | None) -> Array:
    """The mean of x over the valid tokens (all when `valid_BL` is None; 0 when none is)."""
    if valid_BL is None:
        return jnp.mean(x_BL, axis=(0, 1))
    w_BL = valid_BL.astype(jnp.float32).reshape(valid_BL.shape + (1,) * (x_BL.ndim - 2))
    return jnp.sum(x_BL * w_BL, axis=(0, 1)) / jnp.maximum(jnp.sum(valid_BL), 1)


def load_balance_loss(experts_BLK: Array, probs_BLE: Array, valid_BL: Array | None = None) -> Array:
    """E * sum_e f_e P_e (Switch Transformer eq. 4, top-k assignments counted): f_e is the
    fraction of assignments (before capacity) sent to e, P_e the mean probability of e, both
    over the valid (non-padding) tokens. Equals 1 when both are uniform, E when every token
    goes to the one likeliest expert."""
    E = probs_BLE.shape[-1]
    f_E = _valid_mean(jnp.mean(jax.nn.one_hot(experts_BLK, E, dtype=jnp.float32), 2), valid_BL)
    P_E = _valid_mean(probs_BLE.astype(jnp.float32), valid_BL)
    return E * jnp.sum(f_E * P_E)


def z_loss(logits_BLE: Array, valid_BL: Array | None = None) -> Array:
    """Router z-loss (ST-MoE eq. 5): mean over valid tokens of logsumexp(logits)^2."""
    return _valid_mean(jax.nn.logsumexp(logits_BLE.astype(jnp.float32), axis=-1) ** 2, valid_BL)


def moe_reference(moe: MoE, x_BLD: Array, segment_ids_BL: Array | None = None) -> Array:
    """The plain reference: each expert's MLP on every token, in a Python loop over experts,
    weighted by the routing (capacity drops and padding included) and summed, plus the shared
    expert."""
    cfg, routing = moe.cfg, moe.route(x_BLD, segment_ids_BL)
    w, act = moe.weights(), ACTIVATIONS[cfg.activation]
    combine_BLE = combine_weights(routing)
    y_BLD = jnp.zeros_like(x_BLD)
    for e in range(cfg.n_experts):
        h_BLF = x_BLD @ w["up"][e]
        h_BLF = act(x_BLD @ w["gate"][e]) * h_BLF if "gate" in w else act(h_BLF)
        y_BLD = y_BLD + combine_BLE[..., e : e + 1] * (h_BLF @ w["down"][e])
    if moe.shared is not None:
        y_BLD = y_BLD + moe._shared(x_BLD)
    return y_BLD
