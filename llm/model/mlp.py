"""The position-wise MLP: plain (ReLU, GELU) or gated (SwiGLU, GeGLU).

Gated variants (Shazeer, 2020, arXiv:2002.05202) compute act(x W_gate) * (x W_up) W_down and
so hold three matrices; `d_ff` is the width of each branch (Llama-2-7B: 11008).
GELU exact uses erf; `gelu_tanh` is the tanh approximation GPT-2 was trained with.
"""

from __future__ import annotations

import jax
from flax import nnx

from llm.config import ModelConfig
from llm.model.layers import Linear
from llm.model.outputs import LayerOutput
from llm.sharding.constraints import constrain
from llm.typing import Array

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "swiglu": jax.nn.silu,
    "geglu": lambda x: jax.nn.gelu(x, approximate=False),
    "geglu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # T5 v1.1 (HF gelu_new)
}


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, out_std: float, rngs: nnx.Rngs):
        D, F = cfg.d_model, cfg.d_ff
        common = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        up_bias = (F,) if cfg.mlp_bias else None
        self.activation = cfg.activation
        self.up = Linear(
            "BLD,DF->BLF",
            (D, F),
            ("embed", "mlp"),
            bias_shape=up_bias,
            bias_axes=("mlp",),
            std=cfg.init_std,
            **common,
        )
        self.gate = (
            Linear(
                "BLD,DF->BLF",
                (D, F),
                ("embed", "mlp"),
                bias_shape=up_bias,
                bias_axes=("mlp",),
                std=cfg.init_std,
                **common,
            )
            if cfg.gated
            else None
        )
        self.down = Linear(
            "BLF,FD->BLD",
            (F, D),
            ("mlp", "embed"),
            bias_shape=(D,) if cfg.mlp_bias else None,
            bias_axes=("embed",),
            std=out_std,
            **common,
        )

    def __call__(self, x_BLD: Array) -> LayerOutput:
        """The MLP branch; a `LayerOutput` like every layer's (no cache, no auxiliary loss),
        the slot through which a mixture-of-experts MLP reports its balancing loss."""
        act = ACTIVATIONS[self.activation]
        if self.gate is not None:
            h_BLF = act(self.gate(x_BLD)) * self.up(x_BLD)
        else:
            h_BLF = act(self.up(x_BLD))
        h_BLF = constrain(h_BLF, ("batch", "length", "mlp"))
        return LayerOutput(self.down(h_BLF))
