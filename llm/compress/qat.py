"""Quantization-aware training: the forward pass sees the weights it will be served with.

    spec = qat_spec(model_cfg, fmt="int4", bits=4, group=128)      # or train.qat in a config
    model = apply_qat(model_params, spec)       # inside the jitted loss, every step

Design:
- Fake quantization with a straight-through estimator (Bengio et al. 2013, arXiv:1308.3432;
  QAT for integer inference, Jacob et al. 2018, arXiv:1712.05877; for LLMs, Liu et al.
  2023, LLM-QAT, arXiv:2305.17888): each target weight w enters the forward as
      w + stop_gradient(dequantize(quantize(w)) - w)
  whose value is the round-to-nearest weight and whose gradient is the identity, so the
  optimiser keeps updating the float "shadow" weights with the gradient taken at the
  quantized point. The grid is `llm.ops.quantized.quantize`'s (per-group absmax or min/max,
  recomputed from w every step), the very function `llm quantize --method rtn` and
  `llm.model.quantized.quantize_params` use, so RTN of the trained float weights gives a
  model whose forward equals the QAT forward (tested), which is the point of QAT.
- The spec (format, bits, group, which weights and their layouts) is static: a `QatSpec` is a
  pytree node with no leaves, kept as the frozen component "qat" of the run
  (llm/train/trainable.py). It costs no bytes, reaches the jitted loss through the frozen tree
  like every other component, and `model_params` applies it after the adapters, so every
  loss trains quantization-aware without knowing it.
- Targets default to the decoder's block Linear weights (`BLOCK_LINEARS`), what PTQ
  quantizes; embeddings and the head stay float unless `targets` names them.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax

from llm.config import ModelConfig
from llm.model.quantized import BLOCK_LINEARS, path_of, weight_layouts
from llm.ops import quantized
from llm.typing import Array, PyTree

COMPONENT = "qat"  # the frozen component holding the run's QatSpec
LAYER_INDEX = re.compile(r"^blocks/\d+/")  # per-layer (unscanned) paths: blocks/3/attn/q/w


@dataclasses.dataclass(frozen=True)
class QatSpec:
    """What the forward fake-quantizes: format, bits, group and {path: (n_in, n_out)}."""

    fmt: str
    bits: int
    group: int  # input features per scale; 0 = one scale per output channel
    layouts: tuple[tuple[str, int, int], ...]  # (param path, n_in, n_out) of each target

    def __post_init__(self) -> None:
        quantized.code_range(self.fmt, self.bits)  # raises naming a bad format / bits pair
        if not self.layouts:
            raise ValueError("qat: the spec names no target weight")


# static fields only: the spec is part of the tree's structure, never an array
jax.tree_util.register_dataclass(
    QatSpec, data_fields=[], meta_fields=["fmt", "bits", "group", "layouts"]
)


def qat_spec(
    model: ModelConfig,
    *,
    fmt: str,
    bits: int | None = None,
    group: int = 128,
    targets: str = BLOCK_LINEARS,
) -> QatSpec:
    """The spec for `model`'s weights matching `targets`; bits None = the format's widest."""
    bits = bits if bits is not None else (8 if fmt == "int8" else 4)
    layouts = weight_layouts(model)
    chosen = tuple((p, *layouts[p]) for p in layouts if re.search(targets, p))
    if not chosen:
        raise ValueError(
            f"train.qat.targets: {targets!r} matches no quantizable weight ({list(layouts)})"
        )
    return QatSpec(fmt, bits, group, chosen)


def fake_quantize(w: Array, spec: QatSpec, n_in: int, n_out: int) -> Array:
    """w's round-to-nearest value in the forward, identity in the backward (STE)."""
    q = quantized.quantize(w, fmt=spec.fmt, bits=spec.bits, group=spec.group, n_in=n_in,
                           n_out=n_out)  # fmt: skip
    return w + jax.lax.stop_gradient(quantized.dequantize(q) - w)


def apply_qat(model: PyTree, spec: QatSpec) -> PyTree:
    """The decoder tree with every target weight fake-quantized (QArray leaves are left as
    they are: a stored quantized base is already on its grid)."""
    layouts = {p: (n_in, n_out) for p, n_in, n_out in spec.layouts}

    def one(keys: tuple[Any, ...], leaf: Any) -> Any:
        name = LAYER_INDEX.sub("blocks/", path_of(keys))
        if name not in layouts or quantized.is_qarray(leaf):
            return leaf
        try:
            return fake_quantize(leaf, spec, *layouts[name])
        except ValueError as err:
            raise ValueError(f"train.qat: {path_of(keys)} {tuple(leaf.shape)}: {err}") from None

    return jax.tree_util.tree_map_with_path(one, model, is_leaf=quantized.is_qarray)


def check_spec(spec: QatSpec, abstract_model: PyTree) -> None:
    """Raises here, before any compile, when a target's shape does not fit the grid (a group
    that does not divide its input features, an odd last axis for 4-bit packing)."""
    jax.eval_shape(lambda m: apply_qat(m, spec), abstract_model)
