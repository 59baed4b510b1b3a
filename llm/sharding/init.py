"""Sharded training state: where every array lives, and initialisation in place.

    plan = make_plan(cfg, mesh)                       # checks the config against the mesh
    tx = make_optimizer(cfg.optim, steps, abstract_params(cfg.model), logical_axes(cfg.model))
    state = init_train_state(cfg, plan, tx)           # TrainState, each leaf already sharded
    step = make_train_step(cfg, loss, tx, schedule,
                           state_shardings=state_shardings(cfg, plan, tx),
                           batch_sharding=plan.batch)

Initialisation is `jax.jit(build, out_shardings=...)`: the partitioner gives each device
only the slice of the RNG computation that produces its own shard (threefry is
partitionable by default since JAX 0.5), so no host or device ever holds the full model.

Optimizer state follows the parameters: a state leaf whose key path ends with a param's path
and has that param's shape (Adam's mu and nu, momentum) gets the param's spec; anything else
(step counts, Adafactor's factored rows/columns) is small and replicated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llm.config import Config
from llm.model import init_params, logical_axes
from llm.model.functional import abstract_params
from llm.sharding import rules as R
from llm.train.state import TrainState, init_state
from llm.typing import PyTree


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
    """The mesh, the resolved rules and the param/batch layouts of one run."""

    mesh: Mesh
    preset: str
    rules: Mapping[str, R.MeshAxes]
    param_specs: PyTree  # params-shaped tree of mesh PartitionSpecs
    batch: NamedSharding  # [B, L] batches: B over (data, fsdp), L per the rules

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


def _builder(cfg: Config, tx: optax.GradientTransformation):
    t = cfg.train
    scale = t.loss_scale_init if cfg.model.dtype == "float16" else 1.0

    def build(key: jax.Array) -> TrainState:
        params = init_params(cfg.model, key)
        return init_state(params, tx, seed=t.seed, loss_scale=scale, spike_window=t.spike_window)

    return build


def state_specs(cfg: Config, plan: ShardingPlan, tx: optax.GradientTransformation) -> TrainState:
    """TrainState-shaped tree of mesh PartitionSpecs (params, optimizer state, scalars)."""
    abstract = jax.eval_shape(_builder(cfg, tx), jax.random.key(0))
    replicated = jax.tree.map(lambda _: PartitionSpec(), abstract)
    opt = opt_state_specs(abstract.opt_state, abstract.params, plan.param_specs)
    return dataclasses.replace(replicated, params=plan.param_specs, opt_state=opt)


def state_shardings(
    cfg: Config, plan: ShardingPlan, tx: optax.GradientTransformation
) -> TrainState:
    """`state_specs` as NamedShardings: the step's in/out shardings and restore targets."""
    return R.named(plan.mesh, state_specs(cfg, plan, tx))


def abstract_state(cfg: Config, plan: ShardingPlan, tx: optax.GradientTransformation) -> TrainState:
    """ShapeDtypeStructs with shardings: what `Checkpointer.restore` fills on this mesh."""
    abstract = jax.eval_shape(_builder(cfg, tx), jax.random.key(0))
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract,
        state_shardings(cfg, plan, tx),
    )


def init_train_state(
    cfg: Config, plan: ShardingPlan, tx: optax.GradientTransformation
) -> TrainState:
    """A step-0 TrainState created directly in its shards (seed `cfg.train.seed`)."""
    build = jax.jit(_builder(cfg, tx), out_shardings=state_shardings(cfg, plan, tx))
    return build(jax.random.key(cfg.train.seed))


def shard_bytes(tree: PyTree) -> tuple[int, int]:
    """(bytes on the most loaded device, bytes of the whole tree) of concrete arrays."""
    per_device: dict[Any, int] = {}
    total = 0
    for x in jax.tree.leaves(tree):
        total += x.nbytes
        for shard in x.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return max(per_device.values(), default=0), total
