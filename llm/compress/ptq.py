"""Post-training quantization of a whole model, one transformer layer at a time.

    spec = PtqSpec(method="gptq", fmt="int4", bits=4, group=64)
    tokens_BL = calibration.calibration_tokens(tokenizer, n_seqs=spec.n_calib, seq_len=...)
    q_params = quantize_model(cfg, params, tokens_BL, spec)   # QArray leaves; forward reads them

Design:
- **Methods are per-layer functions** (`LayerMethod`, llm/compress/spec.py) in one table,
  `METHODS`: round-to-nearest (here), GPTQ (llm/compress/gptq.py, Frantar et al. 2022,
  arXiv:2210.17323), AWQ (llm/compress/awq.py, Lin et al. 2023, arXiv:2306.00978) and
  SmoothQuant W8A8 (llm/compress/smoothquant.py, Xiao et al. 2022, arXiv:2211.10438). A new
  method is a new entry, not a branch in the driver.
- **Layer-sequential** (GPTQ sec. 4, "the quantized outputs of the previous layers"): the
  calibration tokens are embedded once; each layer is quantized from the activations it
  actually receives in the quantized model, i.e. the outputs of the already-quantized layers
  before it, and those activations are then pushed through the quantized layer. Only one
  layer's activations x_BLD (and its Linears' inputs) are alive at a time, so calibration
  memory is independent of depth.
- RTN needs no activations: `quantize_model` with method "rtn" is `quantize_params` over the
  whole tree at once (the per-layer `rtn_layer` gives the same codes; tested).
- Embeddings (the token table and an untied head) are RTN-quantized only when asked
  (`quantize_embeddings`): they are read one row per token, so they cost little time at
  decode, and GPTQ's Hessian is not defined for a lookup.
- The per-layer results are stacked back along the layers axis (`calibration.stack_layers`),
  the layout the model scans and `save_model` writes.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from llm.compress import calibration
from llm.compress.awq import awq_layer, quantize_block
from llm.compress.gptq import block_linears, get_path, gptq_layer
from llm.compress.smoothquant import smoothquant_layer
from llm.compress.spec import LayerMethod, PtqSpec
from llm.config import ModelConfig
from llm.model import abstract_params
from llm.model import quantized as qmodel
from llm.ops import quantized as qz
from llm.typing import Array, PyTree


def rtn_layer(cfg: ModelConfig, layer: PyTree, x_BLD: Array, spec: PtqSpec) -> PyTree:
    """One block with every Linear rounded to nearest (x_BLD unused). A `LayerMethod`."""
    del x_BLD
    block_linears(cfg, layer)  # every block Linear of the config is in the tree
    return quantize_block(cfg, layer, fmt=spec.fmt, bits=spec.bits, group=spec.group)


METHODS: dict[str, LayerMethod] = {
    "rtn": rtn_layer,
    "gptq": gptq_layer,
    "awq": awq_layer,
    "smoothquant": smoothquant_layer,
}


def check_spec(cfg: ModelConfig, spec: PtqSpec) -> None:
    """ValueError naming the weight if `spec.group` does not divide some quantized weight's
    input features (or a 4-bit weight's last axis is odd): found before any work is done."""
    if spec.method not in METHODS:
        raise ValueError(f"quantize: method {spec.method!r} is not one of {sorted(METHODS)}")
    targets = qmodel.BLOCK_LINEARS + ("|" + qmodel.EMBEDDINGS if spec.quantize_embeddings else "")
    abstract = abstract_params(cfg)
    for path, (n_in, n_out) in qmodel.weight_layouts(cfg).items():
        if not re.search(targets, path):
            continue
        w = get_path(abstract, path)
        quantize = functools.partial(qz.quantize, fmt=spec.fmt, bits=spec.bits, group=spec.group,
                                     n_in=n_in, n_out=n_out)  # fmt: skip
        try:
            jax.eval_shape(quantize, w)
        except ValueError as err:
            raise ValueError(f"quantize {path} {tuple(w.shape)}: {err}") from None


def quantize_model(
    cfg: ModelConfig,
    params: PyTree,
    tokens_BL: np.ndarray | Array | None,
    spec: PtqSpec,
    progress: bool = True,
) -> PyTree:
    """`params` with every block Linear quantized by `spec.method`, layer by layer from the
    calibration tokens' activations through the already-quantized layers (`tokens_BL` [B, L]
    may be None for "rtn", which reads none)."""
    check_spec(cfg, spec)
    if tokens_BL is None and spec.method != "rtn":
        raise ValueError(f"quantize: method {spec.method} needs calibration tokens")
    if spec.method == "rtn":
        out = qmodel.quantize_params(cfg, params, fmt=spec.fmt, bits=spec.bits,
                                     group=spec.group)  # fmt: skip
    else:
        blocks = _calibrated_blocks(cfg, params, jnp.asarray(tokens_BL), spec, progress)
        out = {**params, "blocks": blocks}
    if spec.quantize_embeddings:
        out = qmodel.quantize_params(cfg, out, fmt=spec.fmt, bits=spec.bits, group=spec.group,
                                     targets=qmodel.EMBEDDINGS)  # fmt: skip
    return out


def _calibrated_blocks(cfg, params, tokens_BL, spec, progress) -> PyTree:
    method = METHODS[spec.method]
    x_BLD = calibration.embed_inputs(cfg, params, tokens_BL)
    layers = []
    bar = tqdm(range(cfg.n_layers), desc=f"{spec.method} layers", disable=not progress)
    for i in bar:
        layer = method(cfg, calibration.layer_params(params, i), x_BLD, spec)
        x_BLD = calibration.run_layer(cfg, layer, x_BLD)
        layers.append(layer)
    return calibration.stack_layers({"blocks": tuple(layers)})["blocks"]


def quantized_bits(params: PyTree) -> float:
    """Stored bits per weight value over the QArrays of `params` (scales and offsets
    included); 0.0 if there are none."""
    qs = [x for x in jax.tree.leaves(params, is_leaf=qz.is_qarray) if qz.is_qarray(x)]
    values = sum(int(np.prod(q.shape)) for q in qs)
    return 8 * sum(qz.nbytes(q) for q in qs) / values if values else 0.0
