"""FLOPs per token and saved activations of a Mamba model or hybrid (`model.arch: mamba`),
for `llm.model.accounting` (MFU in the train log, `llm model`, the memory estimates).

Per Mamba layer and token (D d_model, E inner width, N state size, R dt rank, K conv width):
* matmuls: in_proj D x 2E, x_proj E x (R + 2N), dt_proj R x E, out_proj E x D, 2 FLOPs per
  weight element as everywhere in accounting.py;
* sequence mixing, the analogue of attention's scores (counted, unlike other element-wise
  work, because it grows with N as attention's grows with the context): the depthwise conv
  2KE, and the selective scan 6EN (dt A and dt B u to discretise, a h + b, C . h).
A hybrid's attention layers cost what a Transformer block costs (its matmuls, plus
4 ctx n_heads head_dim for the scores and the mixing).

Saved activations per token (`floats_per_token`): per Mamba layer the block input D, x and z
(2E), the conv output and u (2E), dt B C (R + 2N), dt (E), the scan's a, b and h (3EN, the
dominant term: associative_scan keeps its levels) and y (E); per attention layer its
inputs, q k v, the mixed values and the MLP hidden (flash-style: no score matrix).
"""

from __future__ import annotations

from llm.config import ModelConfig
from llm.model.ssm_cache import dt_rank, inner_width, layer_kinds


def _dims(cfg: ModelConfig) -> tuple[int, int, int, int, int]:
    return cfg.d_model, inner_width(cfg), cfg.ssm_state, dt_rank(cfg), cfg.ssm_conv


def _attention_matmuls(cfg: ModelConfig) -> int:
    D, Nh, Kh, H, F = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size, cfg.d_ff
    return D * Nh * H * 2 + D * Kh * H * 2 + D * F * (3 if cfg.gated else 2)


def matmul_params(cfg: ModelConfig) -> int:
    """Weight elements multiplied once per token: every layer's projections and the output."""
    D, E, N, R, _ = _dims(cfg)
    kinds = layer_kinds(cfg)
    mamba = D * 2 * E + E * (R + 2 * N) + R * E + E * D
    attention = _attention_matmuls(cfg) if cfg.ssm_attention_every else 0
    return kinds.count("mamba") * mamba + kinds.count("attention") * attention + D * cfg.vocab_size


def forward_flops_per_token(cfg: ModelConfig, ctx: float) -> float:
    """2 x matmul params + conv and scan per Mamba layer + scores and mixing per attention
    layer, whose queries see `ctx` keys on average."""
    _, E, N, _, K = _dims(cfg)
    kinds = layer_kinds(cfg)
    mixing = kinds.count("mamba") * (2 * K * E + 6 * E * N)
    scores = kinds.count("attention") * 4 * ctx * cfg.n_heads * cfg.head_size
    return 2.0 * matmul_params(cfg) + mixing + scores


def floats_per_token(cfg: ModelConfig) -> int:
    """Activations a Mamba model keeps per token for its backward pass (logits excepted)."""
    D, E, N, R, _ = _dims(cfg)
    kinds = layer_kinds(cfg)
    mamba = D + 2 * E + 2 * E + (R + 2 * N) + E + 3 * E * N + E
    Nh, Kh, H, F = cfg.n_heads, cfg.kv_heads, cfg.head_size, cfg.d_ff
    attention = 2 * D + (Nh + 2 * Kh) * H + Nh * H + F * (2 if cfg.gated else 1)
    return D + kinds.count("mamba") * mamba + kinds.count("attention") * attention
