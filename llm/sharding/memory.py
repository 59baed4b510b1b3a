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
An MoE layer adds an estimate of its routed experts' activations per local token
(llm/model/accounting.py `moe_floats_per_token`).
Temporary buffers (FSDP's gathered weights, XLA scratch) are not included: the compiled
executable's `memory_analysis` reports those, see bench/sharding.py.

Per component (`MemoryPlan.components`): the params and frozen trees are dicts of components
(llm/train/trainable.py: the decoder "model", a "reference" policy, a "value_head", an
adapter such as "lora"), so the same bytes are also given per component: what an alignment
run pays for its policy, its reference and its heads. An optimizer-state leaf belongs to the
component of the param it mirrors (Adam's mu and nu); leaves that mirror none (step counts)
are the row "(optimizer scalars)". The rows sum to the plan's totals exactly. A model the
run reads beside its train state (the RL loop's reward model, `rl.reward_model`, loaded whole
on each device) is counted in `MemoryPlan.outside` and has its own row.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import numpy as np

from llm.config import Config
from llm.model.accounting import baseline_floats_per_token, moe_floats_per_token
from llm.sharding import rules as R
from llm.sharding.init import check_batch, opt_state_specs
from llm.sharding.mesh import resolve_shape
from llm.typing import PyTree

FLASH_IMPLS = ("pallas", "cudnn")  # fused attention: the s x s scores are never stored
UNOWNED = "(optimizer scalars)"  # optimizer-state leaves that mirror no param


@dataclasses.dataclass(frozen=True)
class ComponentBytes:
    """Bytes per device of one component of the params / frozen trees (a run holds several:
    policy, reference, heads, adapters). A component can be in both trees (a partly frozen
    decoder, a LoRA adapter's fixed scale beside its trained A and B)."""

    name: str
    trained: int  # its leaves in `params`, param_dtype
    frozen: int  # its leaves in `frozen`
    grads: int  # float32 gradients of its trained leaves
    optimizer: int  # optimizer state mirroring its trained leaves

    @property
    def total(self) -> int:
        return self.trained + self.frozen + self.grads + self.optimizer


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    preset: str
    mesh_shape: dict[str, int]
    params: int  # bytes per device of the trained params, param_dtype
    frozen: int  # bytes per device of the frozen tree (no gradients, no optimizer state)
    grads: int  # bytes per device, float32
    optimizer: int  # bytes per device of the optimizer state
    activations: int  # estimated bytes per device saved for the backward pass
    components: tuple[ComponentBytes, ...] = ()  # the same bytes per component (sorted)
    # weights the run reads outside its train state, whole on each device (the RL reward
    # model, `rl.reward_model`); also a component row with these bytes as `frozen`
    outside: int = 0
    rows_per_example: int = 1  # sequences one example runs (2: a preference pair's two sides)
    # RL: what the rollout phase adds, whole (the engine's per-layer copy of the block
    # weights and its KV cache); that phase holds no gradients or activations, so its peak
    # is `rollout_total`, not part of `total` (the training phase)
    rollout: int = 0

    @property
    def total(self) -> int:
        return (
            self.params + self.frozen + self.grads + self.optimizer + self.activations
            + self.outside
        )  # fmt: skip

    @property
    def rollout_total(self) -> int:
        """Bytes per device while an RL run generates: the state without gradients or
        activations, the outside models, and the engine's buffers."""
        return self.params + self.frozen + self.optimizer + self.outside + self.rollout


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
    if m.arch not in ("transformer", "t5"):  # no attention: the baseline's own, split over batch
        values = baseline_floats_per_token(m) * np.dtype(m.dtype).itemsize
        return int((s / c) * (b / d) * (values + 4 * m.vocab_size / ways["vocab"]))
    scale = np.dtype(m.dtype).itemsize / 2  # the paper's constants are for 16-bit values
    local = (s / c) * (b / d) * h
    scores = 0 if m.attention_impl in FLASH_IMPLS else 5 * a * s / (h * tp)
    layer = local * (10 + 24 / tp + scores) * scale
    layer += 4 * s * (b / d) * m.kv_heads * m.head_size / tp * scale  # gathered K and V
    # an MoE layer's routed experts (an estimate, not split over tensor parallelism)
    layer += (s / c) * (b / d) * moe_floats_per_token(m, s) * np.dtype(m.dtype).itemsize
    # a t5 decoder layer adds cross-attention to a block: about 1.5 encoder layers
    n = m.n_layers + (1.5 * m.decoder_layers if m.arch == "t5" else 0)
    if m.remat == "none":
        blocks = n * layer
    elif m.remat == "full":
        blocks = n * 2 * local * scale + layer
    else:
        blocks = n * layer / 2 + layer / 2
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
    outside: Mapping[str, int] | None = None,
    rows_per_example: int = 1,
    rollout: int = 0,
) -> MemoryPlan:
    """Per-device bytes for `cfg.mesh` resolved on `n_devices` devices (raises if invalid);
    `outside`: {name: bytes} of models read beside the train state, unsharded;
    `rows_per_example`: sequences each batch example runs through the decoder (a preference
    pair [B, 2, L] runs two), which multiplies the activations; `rollout`: the RL rollout
    phase's engine buffers (see `MemoryPlan.rollout`)."""
    shape = resolve_shape(cfg.mesh, n_devices)
    rules = R.get_rules(cfg.mesh.rules)
    specs = R.param_specs(rules, params_axes)
    frozen_specs = R.param_specs(rules, frozen_axes)
    R.check_divisible(params, specs, shape)
    R.check_divisible(frozen, frozen_specs, shape)
    check_batch(cfg, R.mesh_spec(rules, ("batch", "length")), shape)
    grads = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, np.float32), params)
    opt_specs = opt_state_specs(opt_state, params, specs)
    trained = _by_component(params, specs, shape)
    fixed = _by_component(frozen, frozen_specs, shape)
    grad = _by_component(grads, specs, shape)
    opt = optimizer_by_component(opt_state, opt_specs, params, shape)
    components = tuple(
        ComponentBytes(n, trained.get(n, 0), fixed.get(n, 0), grad.get(n, 0), opt.get(n, 0))
        for n in sorted({*trained, *fixed, *opt}, key=lambda n: (n == UNOWNED, n))
    ) + tuple(ComponentBytes(n, 0, b, 0, 0) for n, b in sorted((outside or {}).items()))
    return MemoryPlan(
        preset=cfg.mesh.rules,
        mesh_shape=shape,
        params=tree_shard_bytes(params, specs, shape),
        frozen=tree_shard_bytes(frozen, frozen_specs, shape),
        grads=tree_shard_bytes(grads, specs, shape),
        optimizer=tree_shard_bytes(opt_state, opt_specs, shape),
        activations=activation_bytes(cfg, rules, shape) * rows_per_example,
        components=components,
        outside=sum((outside or {}).values()),
        rows_per_example=rows_per_example,
        rollout=rollout,
    )


def _by_component(tree: Mapping, specs: Mapping, shape: Mapping[str, int]) -> dict[str, int]:
    """{component: bytes per device} of a params or frozen tree (a dict of components)."""
    return {name: tree_shard_bytes(sub, specs[name], shape) for name, sub in tree.items()}


def optimizer_by_component(
    opt_state: PyTree, opt_specs: PyTree, params: PyTree, shape: Mapping[str, int]
) -> dict[str, int]:
    """{component: bytes per device} of the optimizer state: a leaf counts for the component
    of the param it mirrors (path suffix and shape, as `opt_state_specs` matches them), else
    for `UNOWNED`."""
    owner = {
        _keys(path): (tuple(leaf.shape), _keys(path)[0])
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    out: dict[str, int] = {}
    flat = jax.tree_util.tree_flatten_with_path(opt_state)[0]
    for (path, leaf), spec in zip(flat, jax.tree.leaves(opt_specs, is_leaf=R.is_spec), strict=True):
        keys, name = _keys(path), UNOWNED
        for i in range(len(keys)):
            found = owner.get(keys[i:])
            if found is not None and found[0] == tuple(leaf.shape):
                name = found[1]
                break
        size = shard_elements(leaf.shape, spec, shape) * np.dtype(leaf.dtype).itemsize
        out[name] = out.get(name, 0) + size
    return out


def _keys(path: tuple) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


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
        (f"activations per device (remat={m.remat}{_rows(p)}, est.)", _gib(p.activations)),
        *([("outside the state (reward model, whole)", _gib(p.outside))] if p.outside else []),
        ("total per device", _gib(p.total)),
    ]
    if p.rollout:
        rows += [
            ("RL rollout engine: weights copy + KV cache", _gib(p.rollout)),
            ("RL rollout phase total (no grads/activations)", _gib(p.rollout_total)),
        ]
    width = max(len(k) for k, _ in rows)
    table = "\n".join(f"{k:<{width}}  {v:>30}" for k, v in rows)
    return table + "\n" + component_table(p) if p.components else table


def _rows(p: MemoryPlan) -> str:
    return f", x{p.rows_per_example} rows" if p.rows_per_example > 1 else ""


def component_table(p: MemoryPlan) -> str:
    """Per-component rows (bytes per device): policy, reference, heads, adapters side by side,
    each in its own unit (a tiny run's heads are KiB beside MiB of decoder)."""
    head = ("component", "trained", "frozen", "gradients", "optimizer", "total")
    rows = [head] + [
        (c.name, *map(_human, (c.trained, c.frozen, c.grads, c.optimizer, c.total)))
        for c in p.components
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{r[0]:<{width}}" + "".join(f"  {v:>11}" for v in r[1:]) for r in rows]
    return "per component, per device\n" + "\n".join(lines)


def _human(n: int) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1 ("0 B" for none)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n} B"


def _gib(n: int) -> str:
    return f"{n / 2**30:,.3f} GiB"
