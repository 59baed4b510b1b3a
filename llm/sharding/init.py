"""Where every array of a run lives: the sharding plan, and specs of any tree or batch.

    plan = make_plan(cfg, mesh)                       # checks the config against the mesh
    specs = tree_specs(plan, axes)                    # logical axes -> mesh PartitionSpecs
    batch = batch_shardings(plan, loss.batch_axes)    # one NamedSharding per batch leaf

The train state built from these lives in llm/train/build.py: this package knows meshes and
logical axes, not what a train state holds (llm.sharding never imports llm.train).

Optimizer state follows the parameters: a state leaf whose key path ends with a param's path
and has that param's shape (Adam's mu and nu, momentum) gets the param's spec; anything else
(step counts, Adafactor's factored rows/columns) is small and replicated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llm.config import Config
from llm.model import logical_axes
from llm.model.functional import abstract_params
from llm.sharding import rules as R
from llm.typing import PyTree


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
    """The mesh, the resolved rules and the param/batch layouts of one run."""

    mesh: Mesh
    preset: str
    rules: Mapping[str, R.MeshAxes]
    param_specs: PyTree  # params-shaped tree of mesh PartitionSpecs
    batch: NamedSharding  # [B, L] leaves: B over (data, fsdp), L per the rules

    @property
    def params(self) -> PyTree:
        return R.named(self.mesh, self.param_specs)


def make_plan(cfg: Config, mesh: Mesh) -> ShardingPlan:
    """Resolves `cfg.mesh.rules` on `mesh`; raises ShardingError before anything compiles."""
    rules = R.get_rules(cfg.mesh.rules)
    specs = R.param_specs(rules, logical_axes(cfg.model))
    shape = dict(mesh.shape)
    R.check_divisible(abstract_params(cfg.model), specs, shape)
    batch_spec = R.mesh_spec(rules, ("batch", "length"))
    check_batch(cfg, batch_spec, shape)
    R.check_axes_used(
        [*jax.tree.leaves(specs, is_leaf=R.is_spec), batch_spec], shape, cfg.mesh.rules
    )
    return ShardingPlan(mesh, cfg.mesh.rules, rules, specs, NamedSharding(mesh, batch_spec))


def check_batch(cfg: Config, spec: PartitionSpec, shape: Mapping[str, int]) -> None:
    """The global batch must split evenly over its shards (each device gets whole rows).

    Micro-batches (`grad_accum`) are cut inside the step; if their rows do not divide the
    shards, GSPMD reshards them (correct, slower), so only the global batch is required.
    """
    t = cfg.train
    rows, length = R.axis_size(shape, spec[0]), R.axis_size(shape, spec[1])
    if t.batch_size % rows:
        raise R.ShardingError(
            f"train.batch_size={t.batch_size} is not divisible by the {rows} batch shards "
            f"(mesh axes {spec[0]})"
        )
    if t.seq_len % length:
        raise R.ShardingError(
            f"train.seq_len={t.seq_len} is not divisible by the {length} sequence shards "
            f"(mesh axes {spec[1]})"
        )


def _key_str(k: Any) -> str:
    return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def opt_state_specs(opt_abstract: PyTree, params_abstract: PyTree, param_specs: PyTree) -> PyTree:
    """Optimizer-state specs: a param's spec where the leaf mirrors that param, else P()."""
    by_path = {}
    flat_params = jax.tree_util.tree_flatten_with_path(params_abstract)[0]
    for (path, leaf), spec in zip(
        flat_params, jax.tree.leaves(param_specs, is_leaf=R.is_spec), strict=True
    ):
        by_path[tuple(_key_str(k) for k in path)] = (tuple(leaf.shape), spec)

    def spec_of(path: tuple, leaf: Any) -> PartitionSpec:
        keys = tuple(_key_str(k) for k in path)
        for i in range(len(keys)):
            shape_spec = by_path.get(keys[i:])
            if shape_spec is not None and shape_spec[0] == tuple(leaf.shape):
                return shape_spec[1]
        return PartitionSpec()

    return jax.tree_util.tree_map_with_path(spec_of, opt_abstract)


def tree_specs(plan: ShardingPlan, axes: PyTree) -> PyTree:
    """Mesh PartitionSpecs of any tree of logical axes (params, frozen, extra components)."""
    return R.param_specs(plan.rules, axes)


def batch_shardings(plan: ShardingPlan, batch_axes: Mapping[str, tuple]) -> dict[str, Any]:
    """{leaf: NamedSharding} from a loss's declared logical axes per batch leaf."""
    return {
        key: NamedSharding(plan.mesh, R.mesh_spec(plan.rules, tuple(axes)))
        for key, axes in batch_axes.items()
    }


def shard_bytes(tree: PyTree) -> tuple[int, int]:
    """(bytes on the most loaded device, bytes of the whole tree) of concrete arrays."""
    per_device: dict[Any, int] = {}
    total = 0
    for x in jax.tree.leaves(tree):
        total += x.nbytes
        for shard in x.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return max(per_device.values(), default=0), total
