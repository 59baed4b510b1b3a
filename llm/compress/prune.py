"""Unstructured and N:M pruning of the block Linears: magnitude, Wanda, SparseGPT.

    spec = PruneSpec(method="wanda", sparsity=0.5)          # or nm=(2, 4), scope="global"
    params, masks = prune_model(cfg, params, tokens_BL, spec)
    # params: pruned float weights, exact zeros in place; masks: bool, keyed like params

Methods (each on one weight viewed as a matrix w_KN, K = input features, N = outputs):
- magnitude (Han et al. 2015, arXiv:1506.02626): score |w|. Layer-wise (`scope="layer"`)
  prunes the lowest scores of each matrix; global (`scope="global"`) one threshold over every
  target of the model, so layers end with different sparsities.
- Wanda (Sun et al. 2023, arXiv:2306.11695): score |w_kn| * ||X_k||_2, the weight times the
  l2 norm of its input feature over the calibration tokens, compared per output (sec. 3:
  "per output" groups beat per-layer ones); in our [K, N] layout each column n competes over
  its K inputs. No weight update.
- SparseGPT (llm/compress/sparsegpt.py): mask and OBS weight update from the Hessian.
- N:M semi-structured (Mishra et al. 2021, arXiv:2104.08378; 2:4 is what sparse tensor cores
  run): of every M consecutive inputs of each output column, the N highest scores are kept.

Calibrated methods run layer by layer (llm/compress/calibration.py), each layer calibrated on
the outputs of the already-pruned layers before it (the sequential scheme of SparseGPT sec.
3.5 and Wanda's code). Counts are exact: `round(sparsity * size)` weights per comparison
group are pruned, ties going to the earlier position, so masks are deterministic; except
`--global`, which prunes every weight at or below one threshold (ties there all pruned).
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from llm.compress import calibration
from llm.compress.calibration import get_path, set_path
from llm.compress.sparsegpt import hessian, sparsegpt
from llm.config import ModelConfig
from llm.model.quantized import BLOCK_LINEARS, weight_layouts
from llm.typing import Array, PyTree

METHODS = ("magnitude", "wanda", "sparsegpt")
SCOPES = ("layer", "global")
SHARED_INPUT = {"attn/k/w": "attn/q/w", "attn/v/w": "attn/q/w", "mlp/gate/w": "mlp/up/w"}


@dataclasses.dataclass(frozen=True)
class PruneSpec:
    """One pruning run: method, how much, which weights, calibration settings."""

    method: str = "magnitude"  # magnitude | wanda | sparsegpt
    sparsity: float = 0.5  # fraction of each target's weights set to zero (unstructured)
    nm: tuple[int, int] | None = None  # (N, M): keep N of every M inputs per output; else None
    scope: str = "layer"  # layer: per matrix | global: one magnitude threshold over all targets
    targets: str = BLOCK_LINEARS  # regex on param paths ("blocks/attn/q/w") of pruned weights
    block: int = 128  # SparseGPT: input rows per mask-selection block and lazy batch
    damp: float = 0.01  # SparseGPT: dampening added to the Hessian diagonal, times its mean
    n_calib: int = 64  # calibration sequences (wanda, sparsegpt)
    calib_len: int = 256  # tokens per calibration sequence
    seed: int = 0  # which calibration windows are drawn

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"prune: method {self.method!r} is not one of {METHODS}")
        if self.scope not in SCOPES:
            raise ValueError(f"prune: scope {self.scope!r} is not one of {SCOPES}")
        if self.nm is None and not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"prune: sparsity {self.sparsity} must lie in [0, 1)")
        if self.nm is not None and not 0 < self.nm[0] < self.nm[1]:
            raise ValueError(f"prune: N:M {self.nm[0]}:{self.nm[1]} needs 0 < N < M")
        if self.scope == "global" and (self.method != "magnitude" or self.nm is not None):
            raise ValueError("prune: scope=global is unstructured magnitude pruning only")
        if self.calibrated and (self.n_calib < 1 or self.calib_len < 2):
            raise ValueError("prune: need at least one calibration sequence of >= 2 tokens")

    @property
    def calibrated(self) -> bool:
        """Whether the method reads calibration activations."""
        return self.method != "magnitude"


def magnitude_scores(w_KN: Array) -> Array:
    return jnp.abs(w_KN.astype(jnp.float32))


def wanda_scores(w_KN: Array, x_MK: Array) -> Array:
    """|W_kn| * ||X_k||_2 (Wanda eq. 1), the norm over the M calibration tokens."""
    norm_K = jnp.linalg.norm(x_MK.astype(jnp.float32), axis=0)
    return jnp.abs(w_KN.astype(jnp.float32)) * norm_K[:, None]


def keep_highest(scores: Array, n_pruned: int, axis: int | None) -> np.ndarray:
    """Keep mask: False for the `n_pruned` lowest scores along `axis` (None: whole array),
    ties pruned at the earlier position. On the host (one stable numpy argsort): XLA's CPU
    sort is far slower, and a mask is chosen once per matrix."""
    s = np.asarray(scores)
    if axis is None:
        return keep_highest(s.reshape(-1), n_pruned, 0).reshape(s.shape)
    lowest = np.take(np.argsort(s, axis=axis, kind="stable"), np.arange(n_pruned), axis=axis)
    keep = np.ones(s.shape, bool)
    np.put_along_axis(keep, lowest, False, axis=axis)
    return keep


def unstructured_mask(scores_KN: Array, sparsity: float, *, per_output: bool) -> np.ndarray:
    """Keep mask pruning `sparsity` of each output column (per_output) or of the matrix."""
    size = scores_KN.shape[0] if per_output else scores_KN.size
    return keep_highest(scores_KN, round(sparsity * size), 0 if per_output else None)


def nm_mask(scores_KN: Array, n: int, m: int) -> np.ndarray:
    """Keep mask with exactly n kept of every m consecutive inputs of each output column."""
    k_in, n_out = scores_KN.shape
    if k_in % m:
        raise ValueError(f"prune: N:M {n}:{m} needs the input features K={k_in} divisible by M")
    groups = scores_KN.reshape(k_in // m, m, n_out)
    return keep_highest(groups, m - n, 1).reshape(k_in, n_out)


def prune_matrix(
    w_KN: Array, x_MK: Array | None, spec: PruneSpec, h_KK: Array | None = None
) -> tuple[Array, Array]:
    """(pruned w_KN, keep mask) for one matrix; x_MK its calibration input (None: magnitude);
    SparseGPT uses `h_KK` when given (matrices reading one input share their Hessian)."""
    if spec.method == "sparsegpt":
        h_KK = hessian(x_MK) if h_KK is None else h_KK
        return sparsegpt(w_KN, h_KK, sparsity=spec.sparsity, nm=spec.nm, block=spec.block,
                         damp=spec.damp)  # fmt: skip
    scores = magnitude_scores(w_KN) if spec.method == "magnitude" else wanda_scores(w_KN, x_MK)
    if spec.nm is not None:
        keep = nm_mask(scores, *spec.nm)
    else:
        keep = unstructured_mask(scores, spec.sparsity, per_output=spec.method == "wanda")
    return jnp.where(keep, w_KN, 0).astype(w_KN.dtype), keep


def block_targets(cfg: ModelConfig, spec: PruneSpec) -> dict[str, int]:
    """{path inside a block ("attn/q/w"): n_in} for the block weights `spec.targets` names."""
    found = {}
    for path, (n_in, _) in weight_layouts(cfg).items():
        if re.search(spec.targets, path):
            if not path.startswith("blocks/"):
                raise ValueError(f"prune: target {path} is not a block Linear (targets "
                                 f"{spec.targets!r}); only block weights are pruned")  # fmt: skip
            found[path.removeprefix("blocks/")] = n_in
    if not found:
        raise ValueError(f"prune: targets {spec.targets!r} match no weight of the model")
    return found


def prune_layer(
    layer: PyTree, inputs: dict[str, Array] | None, targets: dict[str, int], spec: PruneSpec
) -> tuple[PyTree, dict[str, Array]]:
    """(one block's tree with its targets pruned, {path: keep mask in the weight's shape})."""
    keeps, hessians = {}, {}
    for path, n_in in targets.items():
        w = get_path(layer, path)
        if not isinstance(w, jax.Array | np.ndarray):
            raise ValueError(f"prune: {path} is a {type(w).__name__}, not a float array; "
                             "prune the float model, then quantize it")  # fmt: skip
        k_in = int(np.prod(w.shape[:n_in]))
        source = SHARED_INPUT.get(path, path)  # k, v read q's input; gate reads up's
        x = None if inputs is None else inputs.get(source, inputs.get(path))
        if spec.calibrated and x is None:
            raise ValueError(f"prune: no calibration input for {path} (have {sorted(inputs)})")
        if spec.method == "sparsegpt" and source not in hessians:
            hessians[source] = hessian(x)
        w_new, keep = prune_matrix(w.reshape(k_in, -1), x, spec, hessians.get(source))
        layer = set_path(layer, path, w_new.reshape(w.shape))
        keeps[path] = keep.reshape(w.shape)
    return layer, keeps


def _nested(flat: dict[str, Array]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        out = set_path(out, path, value)
    return out


def prune_model(
    cfg: ModelConfig, params: PyTree, tokens_BL: Array | None, spec: PruneSpec
) -> tuple[PyTree, PyTree]:
    """(pruned params, keep masks {"blocks": {...: bool [Y, ...]}}) of the whole model.

    `tokens_BL`: calibration windows (`calibration.calibration_tokens`); unused (may be None)
    for magnitude pruning."""
    targets = block_targets(cfg, spec)
    if spec.scope == "global":
        return _prune_global(params, targets, spec.sparsity)
    if spec.calibrated and tokens_BL is None:
        raise ValueError(f"prune: method {spec.method} needs calibration tokens")
    x_BLD = calibration.embed_inputs(cfg, params, tokens_BL) if spec.calibrated else None
    layers, per_layer = [], []
    for i in tqdm(range(cfg.n_layers), desc=f"prune {spec.method}", unit="layer"):
        layer = calibration.layer_params(params, i)
        inputs = calibration.linear_inputs(cfg, layer, x_BLD) if spec.calibrated else None
        layer, keeps = prune_layer(layer, inputs, targets, spec)
        layers.append(layer)
        per_layer.append(keeps)
        if spec.calibrated:
            x_BLD = calibration.run_layer(cfg, layer, x_BLD)
    blocks = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)  # one copy, not one per layer
    stacked = {p: jnp.stack([keeps[p] for keeps in per_layer]) for p in targets}
    return {**params, "blocks": blocks}, {"blocks": _nested(stacked)}


def _prune_global(
    params: PyTree, targets: dict[str, int], sparsity: float
) -> tuple[PyTree, PyTree]:
    """One magnitude threshold over every target: the `round(sparsity * total)`-th smallest
    |w| (np.partition, linear time); weights at or below it are pruned (ties: all of them)."""
    blocks = params["blocks"]
    mags = {p: np.abs(np.asarray(get_path(blocks, p), np.float32)) for p in targets}
    flat = np.concatenate([m.reshape(-1) for m in mags.values()])
    n_pruned = round(sparsity * flat.size)
    if n_pruned == 0:
        keeps = {p: jnp.ones(m.shape, bool) for p, m in mags.items()}
    else:
        threshold = np.partition(flat, n_pruned - 1)[n_pruned - 1]
        keeps = {p: jnp.asarray(m > threshold) for p, m in mags.items()}
    for p, keep in keeps.items():
        w = get_path(blocks, p)
        blocks = set_path(blocks, p, jnp.where(keep, w, 0).astype(w.dtype))
    return {**params, "blocks": blocks}, {"blocks": _nested(keeps)}


def sparsity_of(params: PyTree, masks: PyTree) -> dict[str, float]:
    """{path: fraction of exact zeros} of every masked weight, and "total" over them all."""
    out, zeros, size = {}, 0, 0
    for path, _ in jax.tree_util.tree_flatten_with_path(masks)[0]:
        name = "/".join(str(k.key) for k in path)
        w = np.asarray(get_path(params, name))
        out[name] = float(np.mean(w == 0))
        zeros, size = zeros + int(np.sum(w == 0)), size + w.size
    out["total"] = zeros / max(size, 1)
    return out
