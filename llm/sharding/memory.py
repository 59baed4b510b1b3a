"""Bytes per device of params, gradients, optimizer state and activations, computed abstractly.

    p = plan(cfg, 256, params, params_axes, frozen, frozen_axes, opt_state)  # abstract trees
    print(report(cfg, p))

`llm.train.build.memory_plan(cfg, n)` builds those trees for a run (this package does not
know what a train state holds). Params, frozen params, gradients and optimizer state are
exact: the real shapes (`jax.eval_shape`) split by the real PartitionSpecs of the preset on
the resolved mesh, on the most loaded device. Gradients (float32, the train step casts them)
and optimizer state exist for the trained params only; frozen ones cost their weights.

Activations are an estimate after Korthikanti et al. (2022, arXiv:2205.05198): per layer and
at 16 bits, s*b*h*(10 + 24/t + 5*a*s/(h*t)) bytes with tensor parallelism t (the 10 is the
norm/residual part that tensor parallelism leaves whole), divided by the batch shards and
by the sequence shards c (our sequence axis splits every activation along the length), plus
the all-gathered K and V (4*s*b*K*H/t bytes per layer, their full length). Fused attention
(`attention_impl` pallas or cudnn; Dao et al. 2022) stores no s x s scores: the 5as/h term
is dropped for it. Remat "full"
keeps only each block's input (2*s*b*h/c) plus one block's activations; "dots" about half.
Float32 logits for the loss are added, split over batch, sequence and vocabulary shards.
Temporary buffers (FSDP's gathered weights, XLA scratch) are not included: the compiled
executable's `memory_analysis` reports those, see bench/sharding.py.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import numpy as np

from llm.config import Config
from llm.sharding import rules as R
from llm.sharding.init import check_batch, opt_state_specs
from llm.sharding.mesh import resolve_shape
from llm.typing import PyTree

FLASH_IMPLS = ("pallas", "cudnn")  # fused attention: the s x s scores are never stored


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    preset: str
    mesh_shape: dict[str, int]
    params: int  # bytes per device of the trained params, param_dtype
    frozen: int  # bytes per device of the frozen tree (no gradients, no optimizer state)
    grads: int  # bytes per device, float32
    optimizer: int  # bytes per device of the optimizer state
    activations: int  # estimated bytes per device saved for the backward pass

    @property
    def total(self) -> int:
        return self.params + self.frozen + self.grads + self.optimizer + self.activations


def shard_elements(shape: tuple[int, ...], spec, mesh_shape: Mapping[str, int]) -> int:
    """Elements of one device's shard of an array of `shape` laid out by `spec`."""
    entries = list(spec) + [None] * (len(shape) - len(spec))
    return math.prod(n // R.axis_size(mesh_shape, e) for n, e in zip(shape, entries, strict=True))


def tree_shard_bytes(abstract: PyTree, specs: PyTree, mesh_shape: Mapping[str, int]) -> int:
    leaves = jax.tree.leaves(abstract)
    flat_specs = jax.tree.leaves(specs, is_leaf=R.is_spec)
    return sum(
        shard_elements(x.shape, s, mesh_shape) * np.dtype(x.dtype).itemsize
        for x, s in zip(leaves, flat_specs, strict=True)
    )


def activation_bytes(cfg: Config, rules: Mapping[str, R.MeshAxes], shape: Mapping[str, int]) -> int:
    """Estimated saved activations per device for one micro-batch (see module docstring)."""
    m, t = cfg.model, cfg.train
    s, b, h, a = t.seq_len, t.batch_size // t.grad_accum, m.d_model, m.n_heads
    ways = {n: math.prod(shape[x] for x in rules[n]) for n in ("batch", "length", "heads", "vocab")}
    d, c, tp = ways["batch"], ways["length"], ways["heads"]
    scale = np.dtype(m.dtype).itemsize / 2  # the paper's constants are for 16-bit values
    local = (s / c) * (b / d) * h
    scores = 0 if m.attention_impl in FLASH_IMPLS else 5 * a * s / (h * tp)
    layer = local * (10 + 24 / tp + scores) * scale
    layer += 4 * s * (b / d) * m.kv_heads * m.head_size / tp * scale  # gathered K and V
    if m.remat == "none":
        blocks = m.n_layers * layer
    elif m.remat == "full":
        blocks = m.n_layers * 2 * local * scale + layer
    else:
        blocks = m.n_layers * layer / 2 + layer / 2
    logits = (s / c) * (b / d) * m.vocab_size / ways["vocab"] * 4
    return int(blocks + logits)


def plan(
    cfg: Config,
    n_devices: int,
    params: PyTree,
    params_axes: PyTree,
    frozen: PyTree,
    frozen_axes: PyTree,
    opt_state: PyTree,
) -> MemoryPlan:
    """Per-device bytes for `cfg.mesh` resolved on `n_devices` devices (raises if invalid)."""
    shape = resolve_shape(cfg.mesh, n_devices)
    rules = R.get_rules(cfg.mesh.rules)
    specs = R.param_specs(rules, params_axes)
    frozen_specs = R.param_specs(rules, frozen_axes)
    R.check_divisible(params, specs, shape)
    R.check_divisible(frozen, frozen_specs, shape)
    check_batch(cfg, R.mesh_spec(rules, ("batch", "length")), shape)
    grads = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, np.float32), params)
    return MemoryPlan(
        preset=cfg.mesh.rules,
        mesh_shape=shape,
        params=tree_shard_bytes(params, specs, shape),
        frozen=tree_shard_bytes(frozen, frozen_specs, shape),
        grads=tree_shard_bytes(grads, specs, shape),
        optimizer=tree_shard_bytes(opt_state, opt_state_specs(opt_state, params, specs), shape),
        activations=activation_bytes(cfg, rules, shape),
    )


def report(cfg: Config, p: MemoryPlan) -> str:
    """The dry-run table of a plan: what one device holds for this preset and mesh."""
    n_devices = math.prod(p.mesh_shape.values())
    mesh = " ".join(f"{k}={v}" for k, v in p.mesh_shape.items())
    m = cfg.model
    rows = [
        (f"mesh ({n_devices} devices)", mesh),
        ("rules preset", p.preset),
        (f"trained params per device ({m.param_dtype})", _gib(p.params)),
        ("frozen params per device", _gib(p.frozen)),
        ("gradients per device (float32)", _gib(p.grads)),
        (f"optimizer state per device ({cfg.optim.name})", _gib(p.optimizer)),
        (f"activations per device (remat={m.remat}, est.)", _gib(p.activations)),
        ("total per device", _gib(p.total)),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v:>30}" for k, v in rows)


def _gib(n: int) -> str:
    return f"{n / 2**30:,.3f} GiB"
