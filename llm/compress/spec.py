"""What a post-training quantization run does: `PtqSpec`, and the per-layer method signature.

    spec = PtqSpec(method="gptq", fmt="int4", bits=4, group=128)
    params = llm.compress.ptq.quantize_model(cfg, params, tokens_BL, spec)

Every calibrated method works one transformer layer at a time (GPTQ's sequential scheme,
Frantar et al. 2022, arXiv:2210.17323, sec. 4): a `LayerMethod` takes one layer's float block
tree and the activations that layer reads (computed through the already-quantized layers
before it) and returns the layer with quantized weights, and with any float leaf it changed
(AWQ and SmoothQuant fold their per-channel scales into the norm before the linears).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from llm.config import ModelConfig
from llm.ops.quantized import FORMATS, code_range
from llm.typing import Array, PyTree

METHOD_NAMES = ("rtn", "gptq", "awq", "smoothquant")


@dataclasses.dataclass(frozen=True)
class PtqSpec:
    """One post-training quantization: method, weight format and calibration settings."""

    method: str = "rtn"  # rtn | gptq | awq | smoothquant
    fmt: str = "int4"  # weight code format (llm/ops/quantized.py): int8 | int4 | uint4 | nf4
    bits: int = 4  # bits per code: 8 (int8), 4 or 3 (int4 / uint4), 4 (nf4)
    group: int = 128  # input features per scale; 0 = one scale per output channel
    act_order: bool = True  # GPTQ: quantize input features by descending Hessian diagonal
    damp: float = 0.01  # GPTQ: dampening added to the Hessian diagonal, times its mean
    block: int = 128  # GPTQ: columns per lazy batch update
    alpha: float = 0.5  # SmoothQuant: migration strength (0 = all on weights, 1 = all on acts)
    grid: int = 20  # AWQ: grid points for the scale exponent over [0, 1)
    n_calib: int = 64  # calibration sequences
    calib_len: int = 256  # tokens per calibration sequence
    seed: int = 0  # which calibration windows are drawn
    quantize_embeddings: bool = False  # also RTN-quantize token_embed / lm_head

    def __post_init__(self) -> None:
        if self.method not in METHOD_NAMES:
            raise ValueError(f"quantize: method {self.method!r} is not one of {METHOD_NAMES}")
        if self.fmt not in FORMATS:
            raise ValueError(f"quantize: format {self.fmt!r} is not one of {FORMATS}")
        code_range(self.fmt, self.bits)  # raises for a bits/format mismatch
        if self.group < 0:
            raise ValueError(f"quantize: group {self.group} must be >= 0 (0 = per channel)")
        if self.method == "smoothquant" and (self.fmt, self.bits) != ("int8", 8):
            raise ValueError("quantize: smoothquant is W8A8: use --fmt int8 --bits 8")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"quantize: alpha {self.alpha} must lie in [0, 1]")
        if self.damp < 0 or self.block < 1 or self.grid < 1:
            raise ValueError(f"quantize: need damp >= 0, block >= 1, grid >= 1 (got "
                             f"{self.damp}, {self.block}, {self.grid})")  # fmt: skip
        if self.method == "smoothquant" and self.group != 0:
            raise ValueError(
                "quantize: smoothquant's int8 x int8 product needs one weight "
                "scale per output channel: group 0"
            )
        if self.n_calib < 1 or self.calib_len < 2:
            raise ValueError("quantize: need at least one calibration sequence of >= 2 tokens")


LayerMethod = Callable[[ModelConfig, PyTree, Array, PtqSpec], PyTree]
