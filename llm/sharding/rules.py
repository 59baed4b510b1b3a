"""The one logical-axis rules table: logical names -> mesh axes, with four presets.

Model code names array dimensions logically (`("embed", "mlp")`, llm/model/layers.py);
this table alone decides which mesh axes split them. Parameters use the model's names;
activations add `batch`, `length` and `act_embed` (the residual width of an activation,
kept apart from the `embed` axis of weights because FSDP shards weights, not activations,
along it).

Presets (Xu et al. 2021 "GSPMD", arXiv:2105.04663, for the mechanism):
  dp       Every device holds every parameter; the batch is split over data (and fsdp).
  fsdp     ZeRO-3 (Rajbhandari et al. 2020, arXiv:1910.02054): every weight and its optimizer
           state split along `embed` over the fsdp axis; XLA all-gathers each weight before
           use and reduce-scatters its gradient.
  fsdp_tp  fsdp plus Megatron tensor parallelism (Shoeybi et al. 2019, arXiv:1909.08053):
           heads, kv_heads, MLP width and vocabulary split over the tensor axis.
  tp_sp    tensor parallelism plus sequence (context) parallelism: activations are split
           along `length` over the sequence axis in norms, MLPs and attention queries; keys
           and values are all-gathered along the sequence for attention (not a ring; see
           docs/sharding.md), which GSPMD inserts from the shardings alone.

Every preset splits `batch` over (data, fsdp, expert) like `llm.data.device.batch_sharding`.

Expert parallelism (GShard, Lepikhin et al. 2020, arXiv:2006.16668), in every preset: the
`expert` param axis (the E of MoE weights [E, D, F]) is split over the expert mesh axis, and
so is the batch outside MoE layers (the expert axis is a data axis for attention and dense
layers). Inside an MoE layer the dispatched tokens [B, E, C, D] are constrained to
(`moe_batch`, `expert`, ...), `moe_batch` being the batch over (data, fsdp) only: going from
batch-split-over-expert to experts-split-over-expert is the all-to-all, which GSPMD inserts
(llm/model/moe.py; the compiled HLO is checked in tests/sharding/test_expert_parallel.py).
On a dense model `mesh.expert` simply adds data parallelism.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llm.typing import PyTree

MeshAxes = tuple[str, ...]

PARAM_AXES = (
    "vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "position", "layers", "expert",
)  # fmt: skip
ACTIVATION_AXES = ("batch", "length", "act_embed", "moe_batch")
LOGICAL_AXES = PARAM_AXES + ACTIVATION_AXES

_BATCH: MeshAxes = ("data", "fsdp", "expert")  # outside MoE layers `expert` splits the batch
_TP = {"vocab": ("tensor",), "mlp": ("tensor",), "heads": ("tensor",), "kv_heads": ("tensor",)}

PRESETS: dict[str, dict[str, MeshAxes]] = {
    "dp": {"batch": _BATCH},
    "fsdp": {"batch": _BATCH, "embed": ("fsdp",)},
    "fsdp_tp": {"batch": _BATCH, "embed": ("fsdp",), **_TP},
    "tp_sp": {"batch": _BATCH, "length": ("sequence",), **_TP},
}
for _table in PRESETS.values():  # every logical name is listed; unlisted means replicated
    _table["expert"] = ("expert",)
    _table["moe_batch"] = ("data", "fsdp")
    for _name in LOGICAL_AXES:
        _table.setdefault(_name, ())


class ShardingError(ValueError):
    """A logical spec cannot be laid out on the mesh (unknown name, indivisible size, ...)."""


def get_rules(preset: str) -> dict[str, MeshAxes]:
    if preset not in PRESETS:
        raise ShardingError(f"unknown rules preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]


def mesh_spec(rules: Mapping[str, MeshAxes], logical: PartitionSpec | tuple) -> PartitionSpec:
    """Logical PartitionSpec ("embed", "mlp") -> mesh PartitionSpec ("fsdp", None)."""
    out, used = [], set()
    for name in logical:
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise ShardingError(f"logical axis {name!r} is not in the rules {sorted(rules)}")
        axes = tuple(rules[name])
        if used & set(axes):
            raise ShardingError(f"{logical}: mesh axes {sorted(used & set(axes))} used twice")
        used |= set(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def axis_size(mesh_shape: Mapping[str, int], entry: str | tuple | None) -> int:
    """How many ways one PartitionSpec entry splits its dimension."""
    if entry is None:
        return 1
    return math.prod(mesh_shape[n] for n in _names(entry))


def _path(keys: tuple) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in keys)


def is_spec(x: object) -> bool:
    return isinstance(x, PartitionSpec)


def param_specs(rules: Mapping[str, MeshAxes], logical_tree: PyTree) -> PyTree:
    """Tree of logical PartitionSpecs (`llm.model.logical_axes`) -> mesh PartitionSpecs."""
    return jax.tree.map(lambda s: mesh_spec(rules, s), logical_tree, is_leaf=is_spec)


def check_divisible(abstract: PyTree, specs: PyTree, mesh_shape: Mapping[str, int]) -> None:
    """Raises ShardingError naming every param path whose dimension its axes do not divide."""
    problems = []
    flat_specs = jax.tree.leaves(specs, is_leaf=is_spec)
    flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
    for (path, leaf), spec in zip(flat, flat_specs, strict=True):
        for dim, (size, entry) in enumerate(zip(leaf.shape, spec, strict=False)):
            ways = axis_size(mesh_shape, entry)
            if size % ways:
                problems.append(
                    f"{_path(path)}: dimension {dim} of shape {tuple(leaf.shape)} has size "
                    f"{size}, not divisible by mesh axes {entry} of size {ways}"
                )
    if problems:
        raise ShardingError("parameters do not divide over the mesh:\n  " + "\n  ".join(problems))


def check_axes_used(specs: list[PartitionSpec], mesh_shape: Mapping[str, int], preset: str) -> None:
    """A mesh axis of size > 1 that no spec uses would only duplicate work: refuse it."""
    used = {a for spec in specs for entry in spec if entry for a in _names(entry)}
    idle = [f"{a}={n}" for a, n in mesh_shape.items() if n > 1 and a not in used]
    if idle:
        raise ShardingError(
            f"mesh axes {idle} are not used by rules preset {preset!r} for this model (every "
            f"device along them would repeat the same work); set them to 1 or pick another preset"
        )


def _names(entry: str | tuple) -> tuple[str, ...]:
    return (entry,) if isinstance(entry, str) else tuple(entry)


def named(mesh: Mesh, specs: PyTree) -> PyTree:
    """Mesh PartitionSpecs -> NamedShardings on `mesh`."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=is_spec)
