"""Position information: sinusoidal tables and rotary embeddings with their scalings.

* Sinusoidal (Vaswani et al., 2017, arXiv:1706.03762): sin on the first half of the
  channels, cos on the second half (the tensor2tensor layout).
* RoPE (Su et al., 2021, arXiv:2104.09864) in the "rotate half" layout used by Llama in
  Hugging Face format: channel i is paired with channel i + H/2.
* Linear scaling (Chen et al., 2023, arXiv:2306.15595, position interpolation): every
  frequency divided by the factor.
* Llama-3.1 scaling: high frequencies kept, low frequencies divided by the factor, a smooth
  blend between (Meta's Llama 3.1 release; the `llama3` rope_type in transformers).
ALiBi lives with the attention masks (`llm/ops/masks.py`) because it is an attention bias.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from llm.config import ModelConfig
from llm.typing import Array


def sinusoidal(positions_BL: Array, dim: int) -> Array:
    """Table rows for the given positions: [B, L, dim], float32."""
    half = dim // 2
    inv_freq = np.exp(-math.log(10000.0) * np.arange(half) / max(half - 1, 1))
    angles_BLh = positions_BL[..., None].astype(jnp.float32) * inv_freq.astype(np.float32)
    return jnp.concatenate([jnp.sin(angles_BLh), jnp.cos(angles_BLh)], axis=-1)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse frequencies [H/2] after the configured scaling (float64, computed once)."""
    head_dim = cfg.head_size
    inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if cfg.rope_scaling == "linear":
        return inv_freq / cfg.rope_scaling_factor
    if cfg.rope_scaling == "llama3":
        return _llama3_scale(inv_freq, cfg)
    return inv_freq


def _llama3_scale(inv_freq: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    factor, orig = cfg.rope_scaling_factor, cfg.rope_original_max_len
    low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (orig / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = np.where(wavelen > orig / low, inv_freq / factor, blended)
    return np.where(wavelen < orig / high, inv_freq, out)


def apply_rope(x_BLNH: Array, positions_BL: Array, inv_freq: np.ndarray) -> Array:
    """Rotates channel pairs (i, i + H/2) by angle position * inv_freq[i]; float32 math."""
    angles_BLh = positions_BL[..., None].astype(jnp.float32) * inv_freq.astype(np.float32)
    cos, sin = jnp.cos(angles_BLh)[:, :, None], jnp.sin(angles_BLh)[:, :, None]
    x1, x2 = jnp.split(x_BLNH.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_BLNH.dtype)
