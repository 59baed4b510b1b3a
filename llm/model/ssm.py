"""Mamba, a selective state-space language model (`model.arch: mamba`), and hybrids with
attention layers (`model.ssm_attention_every`).

Mamba (Gu & Dao, 2023, arXiv:2312.00752) replaces attention with a selective SSM whose step
size and input / output matrices depend on the token, so a fixed-size state decides what to
keep. The model, as the paper's reference implementation and `transformers`' MambaForCausalLM:
token embedding [V, D] -> n_layers pre-norm residual blocks x + Mixer(Norm(x)) -> final norm
-> the tied embedding or an lm_head [D, V]. The mixer (`MambaMixer`, paper Figure 3):

    x, z = in_proj(h)                 [B, L, E] each, E = ssm_expand * D
    u = SiLU(causal depthwise conv1d(x))       (width ssm_conv, with a bias)
    dt_r, B, C = x_proj(u)            [R], [N], [N]; R = ssm_dt_rank, N = ssm_state
    dt = softplus(dt_proj(dt_r) + dt_bias);  A = -exp(A_log)   (A_log [E, N], input-independent)
    y = SSM(u; dt, A, B, C) + D * u   (selective_scan.py)
    out = out_proj(y * SiLU(z))

Design choices:
* Training runs the scan in parallel (`jax.lax.associative_scan`, `ssm_scan: parallel`);
  `ssm_scan: sequential` runs the `lax.scan` reference through the same model.
* The residual stream is kept in float32 whatever `model.dtype` (Mamba's `residual_in_fp32`);
  the SSM state and its arithmetic are float32 too. Norms follow `model.norm` (Mamba: rmsnorm).
* Initialisation as the paper's code: A_log = log(1..N) per channel (S4D-real, Gu et al.,
  2022, arXiv:2206.11893), D = 1, dt_bias = softplus^-1 of dt ~ log-uniform [1e-3, 1e-1],
  dt_proj with the variance of U(+-R^-1/2), conv weights U(+-K^-1/2) (torch's default for a
  depthwise Conv1d), the rest normal(init_std), out_proj scaled by 1/sqrt(2 n_layers) when
  `scale_residual_init`. A_log is a [E, N] matrix: add "A_log" to `optim.no_decay_patterns`
  to exempt it from weight decay as the paper does (configs/mamba_tiny.yaml does).
* Packed rows reset the state and the conv window at each document's first token; padding
  leaves them unchanged (selective_scan.py). Positions are ignored by Mamba layers.
* Layers are stacked (a leading `layers` axis) and run under one `lax.scan` (with
  `model.remat`), so compile time does not grow with depth. Hybrids (Jamba, Lieber et al.,
  2024, arXiv:2403.19887) make every `ssm_attention_every`-th layer a Transformer `Block`
  (attention + MLP, `llm.model.transformer`): two stacks, one of Mamba layers and one of
  Blocks, walked by a Python loop over the layer pattern (`ssm_cache.layer_kinds`), so a
  hybrid's compile time grows with depth; its attention reads positions via rope / alibi.
* Decoding carries each layer's conv window and SSM state (and a hybrid's keys and values)
  in an `SSMCache` (ssm_cache.py); a step continues every row from it.

Letters: B batch, L length, D d_model, E inner width, N state size, R dt rank, K conv width,
W = K - 1, V vocab, Y layers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from llm.config import ModelConfig
from llm.model import kv_cache
from llm.model.attention import LayerCache, split_key
from llm.model.layers import Linear, dropout, make_norm, normal, ones, param, zeros
from llm.model.outputs import ModelOutput, merge_aux
from llm.model.selective_scan import SCANS, causal_conv, selective_ssm
from llm.model.ssm_cache import SSMCache, dt_rank, inner_width, layer_kinds
from llm.model.transformer import REMAT_POLICIES, Block
from llm.ops.masks import default_positions
from llm.typing import Array


def _uniform(bound: float):
    def init(key, shape, dtype):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _s4d_real(key, shape, dtype):
    """A_log = log(n) for n = 1..N on every channel: A = -(1..N) (S4D-real)."""
    del key
    log_n = jnp.log(jnp.arange(1, shape[-1] + 1, dtype=jnp.float32))
    return jnp.broadcast_to(log_n, shape).astype(dtype)


def _dt_bias(key, shape, dtype, dt_min=1e-3, dt_max=1e-1, floor=1e-4):
    """softplus^-1(dt), dt log-uniform in [dt_min, dt_max]: softplus(bias) starts at dt."""
    log_dt = jax.random.uniform(key, shape, jnp.float32, math.log(dt_min), math.log(dt_max))
    dt = jnp.maximum(jnp.exp(log_dt), floor)
    return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)


class MambaMixer(nnx.Module):
    """The selective-SSM sequence mixer of one Mamba block."""

    def __init__(self, cfg: ModelConfig, out_std: float, rngs: nnx.Rngs):
        self.cfg = cfg
        D, E, N, R, K = cfg.d_model, inner_width(cfg), cfg.ssm_state, dt_rank(cfg), cfg.ssm_conv
        pdt = cfg.param_dtype
        common = dict(bias_shape=None, dtype=cfg.dtype, param_dtype=pdt, rngs=rngs)
        std = cfg.init_std
        self.in_proj = Linear("BLD,DZE->BLZE", (D, 2, E), ("embed", None, "mlp"), std=std, **common)
        self.conv_w = param(rngs, _uniform(K**-0.5), (K, E), (None, "mlp"), pdt)
        self.conv_bias = param(rngs, zeros, (E,), ("mlp",), pdt)
        self.x_proj = Linear("BLE,EP->BLP", (E, R + 2 * N), ("mlp", None), std=std, **common)
        dt_std = R**-0.5 / math.sqrt(3)  # the variance of U(+-R^-1/2)
        self.dt_proj = Linear("BLR,RE->BLE", (R, E), (None, "mlp"), std=dt_std, **common)
        self.dt_bias = param(rngs, _dt_bias, (E,), ("mlp",), pdt)
        self.A_log = param(rngs, _s4d_real, (E, N), ("mlp", None), pdt)
        self.D = param(rngs, ones, (E,), ("mlp",), pdt)
        self.out_proj = Linear("BLE,ED->BLD", (E, D), ("mlp", "embed"), std=out_std, **common)

    def __call__(self, h_BLD, segment_ids_BL, window_BWE, state_BEN):
        """(out_BLD, the conv window and SSM state after the last valid token)."""
        cfg = self.cfg
        N, R = cfg.ssm_state, dt_rank(cfg)
        xz_BLZE = self.in_proj(h_BLD)
        x_BLE, z_BLE = xz_BLZE[:, :, 0], xz_BLZE[:, :, 1]
        conv_w, conv_b = self.conv_w[...].astype(cfg.dtype), self.conv_bias[...].astype(cfg.dtype)
        conv_BLE, window_BWE = causal_conv(x_BLE, conv_w, conv_b, window_BWE, segment_ids_BL)
        u_BLE = jax.nn.silu(conv_BLE)
        p_BLP = self.x_proj(u_BLE)
        dt_BLR, B_BLN, C_BLN = p_BLP[..., :R], p_BLP[..., R : R + N], p_BLP[..., R + N :]
        dt_BLE = self.dt_proj(dt_BLR).astype(jnp.float32) + self.dt_bias[...].astype(jnp.float32)
        A_EN = -jnp.exp(self.A_log[...].astype(jnp.float32))
        y_BLE, state_BEN = selective_ssm(
            u_BLE, jax.nn.softplus(dt_BLE), A_EN, B_BLN, C_BLN, self.D[...], segment_ids_BL,
            state_BEN, cfg.ssm_scan,
        )  # fmt: skip
        y_BLE = y_BLE * jax.nn.silu(z_BLE.astype(jnp.float32))
        return self.out_proj(y_BLE.astype(cfg.dtype)), window_BWE, state_BEN


class MambaLayer(nnx.Module):
    """x + dropout(Mixer(Norm(x))), the residual stream x in float32."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        out_std = cfg.init_std
        if cfg.scale_residual_init:
            out_std /= math.sqrt(2 * cfg.n_layers)
        self.norm = make_norm(cfg, cfg.d_model, "embed", rngs)
        self.mixer = MambaMixer(cfg, out_std, rngs)

    def __call__(self, x_BLD, segment_ids_BL, key, window_BWE, state_BEN):
        h_BLD = self.norm(x_BLD).astype(self.cfg.dtype)
        out_BLD, window_BWE, state_BEN = self.mixer(h_BLD, segment_ids_BL, window_BWE, state_BEN)
        out_BLD = dropout(out_BLD, self.cfg.resid_dropout, key)
        return x_BLD + out_BLD.astype(x_BLD.dtype), window_BWE, state_BEN


def _stack(make, n: int, rngs: nnx.Rngs):
    """n modules `make(rngs)` whose params carry a leading `layers` axis (for the scan)."""

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def build(rngs: nnx.Rngs):
        return make(rngs)

    return build(rngs)


class MambaLM(nnx.Module):
    """A Mamba language model, or a Mamba / attention hybrid, behind the Transformer's
    interface (`llm.model.arch`)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        if cfg.arch != "mamba" or cfg.ssm_scan not in SCANS:
            raise ValueError(f"MambaLM needs arch mamba, got {cfg.arch!r} / {cfg.ssm_scan!r}")
        self.cfg = cfg
        V, D, pdt = cfg.vocab_size, cfg.d_model, cfg.param_dtype
        kinds = layer_kinds(cfg)
        self.token_embed = param(rngs, normal(cfg.init_std), (V, D), ("vocab", "embed"), pdt)
        self.mamba_layers = _stack(lambda r: MambaLayer(cfg, r), kinds.count("mamba"), rngs)
        n_attn = kinds.count("attention")
        self.attn_layers = _stack(lambda r: Block(cfg, r), n_attn, rngs) if n_attn else None
        self.final_norm = make_norm(cfg, D, "embed", rngs)
        self.lm_head = (
            None
            if cfg.tie_embeddings
            else param(rngs, normal(cfg.init_std), (D, V), ("embed", "vocab"), pdt)
        )

    @staticmethod
    def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> SSMCache:
        return SSMCache.init(cfg, batch, max_len)

    def __call__(
        self,
        tokens_BL: Array,
        positions_BL: Array | None = None,
        segment_ids_BL: Array | None = None,
        dropout_key: Array | None = None,
        return_logits: bool = True,
        return_hidden_states: bool = False,
        input_embeddings_BLD: Array | None = None,
        cache: SSMCache | None = None,
        layers: tuple | None = None,
        extras=None,
    ) -> ModelOutput:
        """The LM forward (the Transformer's signature). Mamba layers ignore positions; a
        hybrid's attention layers read them (default 0..L-1; with a cache, from its lengths).
        With `cache`, each row continues from the cached state and `out.cache` holds the new
        one (no dropout then). hidden_states: [Y+1, B, L, D], the embedding then each layer's
        output (float32, the residual stream)."""
        _refuse(layers, extras, cache, positions_BL, dropout_key)
        cfg = self.cfg
        B, L = tokens_BL.shape
        seg_BL = jnp.ones((B, L), jnp.int32) if segment_ids_BL is None else segment_ids_BL
        state = SSMCache.init(cfg, B, 0) if cache is None else cache
        kv = state.kv
        if cache is not None and kv is not None:
            positions_BL, kv_pos_BS, kv_seg_BS = kv_cache.step_layout(kv, seg_BL)
        elif positions_BL is None:
            positions_BL = default_positions(B, L)
        k_embed, k_layers = split_key(dropout_key, 2)
        if input_embeddings_BLD is None:
            input_embeddings_BLD = jnp.take(self.token_embed.get_value(), tokens_BL, axis=0)
        x0_BLD = dropout(input_embeddings_BLD.astype(cfg.dtype), cfg.embed_dropout, k_embed)
        x_BLD = x0_BLD.astype(jnp.promote_types(cfg.dtype, jnp.float32))
        run = self._scan if self.attn_layers is None and cfg.scan_layers else self._loop
        attn = None if cache is None or kv is None else (kv_pos_BS, kv_seg_BS)
        x_BLD, conv_YBWE, ssm_YBEN, kv, aux, outs_YBLD = run(
            x_BLD, seg_BL, positions_BL, k_layers, state, attn, return_hidden_states
        )
        hidden_BLD = self.final_norm(x_BLD).astype(cfg.dtype)
        hidden_states = None
        if return_hidden_states:
            hidden_states = jnp.concatenate([x0_BLD[None].astype(x_BLD.dtype), outs_YBLD])
        new_cache = None
        if cache is not None:
            new_cache = cache.advance(conv_YBWE, ssm_YBEN, kv, seg_BL)
        logits = self.logits(hidden_BLD) if return_logits else None
        return ModelOutput(logits, hidden_BLD, hidden_states, aux_losses=aux, cache=new_cache)

    def logits(self, hidden_BLD: Array) -> Array:
        """Output layer: the tied embedding (transposed) or the lm_head."""
        dtype = self.cfg.dtype
        if self.lm_head is None:
            table_VD = self.token_embed.get_value().astype(dtype)
            return jnp.einsum("BLD,VD->BLV", hidden_BLD.astype(dtype), table_VD)
        head_DV = self.lm_head.get_value().astype(dtype)
        return jnp.einsum("BLD,DV->BLV", hidden_BLD.astype(dtype), head_DV)

    def _mamba_body(self, graphdef, seg_BL, collect: bool):
        """scan body: (x, (layer params, window, state, key)) -> (x, (window, state, x?))."""

        def body(x_BLD, layer):
            params, window_BWE, state_BEN, key = layer
            x_BLD, window_BWE, state_BEN = nnx.merge(graphdef, params)(
                x_BLD, seg_BL, key, window_BWE, state_BEN
            )
            return x_BLD, (window_BWE, state_BEN, x_BLD if collect else None)

        if self.cfg.remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[self.cfg.remat], prevent_cse=False)
        return body

    def _scan(self, x_BLD, seg_BL, positions_BL, key, state: SSMCache, attn, collect):
        """Pure Mamba: one `lax.scan` over the stacked layers."""
        del positions_BL, attn
        graphdef, stacked = nnx.split(self.mamba_layers)
        Y = state.conv_YBWE.shape[0]
        keys_Y = None if key is None else jax.random.split(key, Y)
        body = self._mamba_body(graphdef, seg_BL, collect)
        xs = (stacked, state.conv_YBWE, state.ssm_YBEN, keys_Y)
        x_BLD, (conv_YBWE, ssm_YBEN, outs_YBLD) = jax.lax.scan(body, x_BLD, xs)
        return x_BLD, conv_YBWE, ssm_YBEN, None, {}, outs_YBLD

    def _loop(self, x_BLD, seg_BL, positions_BL, key, state: SSMCache, attn, collect):
        """Every layer in order, a Python loop over the pattern (hybrids, scan_layers=false):
        Mamba layers take their slice of the stacks, attention layers are `Block`s (with a
        `LayerCache` view of the keys and values when decoding)."""
        m_graph, m_stacked = nnx.split(self.mamba_layers)
        body = self._mamba_body(m_graph, seg_BL, collect)
        kinds = layer_kinds(self.cfg)
        keys = [None] * len(kinds) if key is None else list(jax.random.split(key, len(kinds)))
        kv, convs, states, aux, outs = state.kv, [], [], [], []
        for i, kind in enumerate(kinds):
            if kind == "mamba":
                m = len(convs)
                layer = (_at(m_stacked, m), state.conv_YBWE[m], state.ssm_YBEN[m], keys[i])
                x_BLD, (window_BWE, state_BEN, out) = body(x_BLD, layer)
                convs.append(window_BWE)
                states.append(state_BEN)
            else:
                a = i // self.cfg.ssm_attention_every
                x_BLD, kv, layer_aux = self._attention(a, x_BLD, seg_BL, positions_BL, keys[i],
                                                       kv, attn)  # fmt: skip
                aux.append(layer_aux)
                out = x_BLD if collect else None
            outs.append(out)
        outs_YBLD = jnp.stack(outs) if collect else None
        return x_BLD, jnp.stack(convs), jnp.stack(states), kv, merge_aux(*aux), outs_YBLD

    def _attention(self, a: int, x_BLD, seg_BL, positions_BL, key, kv, attn):
        """Attention layer `a` of a hybrid: (new stream, updated KVCache or None, aux)."""
        a_graph, a_stacked = nnx.split(self.attn_layers)
        block = nnx.merge(a_graph, _at(a_stacked, a))
        view = None if attn is None else LayerCache(kv.k_YBKSH, kv.v_YBKSH, a, *attn)
        out = block(x_BLD, positions_BL, seg_BL, key, view)
        if attn is not None:
            lengths_B = kv_cache.advance(kv, seg_BL) if a == _last_attention(self.cfg) else None
            kv = kv_cache.KVCache(out.cache.k_YBKSH, out.cache.v_YBKSH,
                                  kv.lengths_B if lengths_B is None else lengths_B)  # fmt: skip
        return out.hidden_BLD, kv, out.aux_losses


def _last_attention(cfg: ModelConfig) -> int:
    """Index of a hybrid's last attention layer: the step advances the KV lengths there
    (step_layout reads the lengths before the step, in every attention layer)."""
    return layer_kinds(cfg).count("attention") - 1


def _at(stacked, i: int):
    return jax.tree.map(lambda a: a[i], stacked)


def _refuse(layers, extras, cache, positions_BL, dropout_key) -> None:
    """The arguments a Mamba model cannot honour."""
    if layers is not None:
        raise ValueError("a mamba model has no per-layer decode layout (`layers`)")
    if extras is not None and any(
        v is not None for v in (extras.prompt_PD, extras.prefix_k_YPKH, extras.adapters)
    ):
        raise ValueError("prompt / prefix tuning and adapters (extras) are Transformer-only")
    if cache is not None and not isinstance(cache, SSMCache):
        raise TypeError(f"a mamba model decodes with an SSMCache, got {type(cache).__name__}")
    if cache is not None and (positions_BL is not None or dropout_key is not None):
        raise ValueError(
            "forward with a cache derives positions from it and runs without dropout: pass "
            "neither positions_BL nor dropout_key"
        )
