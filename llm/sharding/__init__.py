"""Scale-out: device meshes, the logical-axis rules table, specs of any tree, multi-host runs.

    mesh = make_mesh(cfg.mesh)                      # llm/sharding/mesh.py
    plan = make_plan(cfg, mesh)                     # llm/sharding/init.py (rules.py inside)
    specs = tree_specs(plan, axes)                  # logical axes -> PartitionSpecs
    batch = batch_shardings(plan, loss.batch_axes)  # one NamedSharding per batch leaf

The train state built from these (and its per-device memory plan) lives in llm/train/build.py.

See docs/sharding.md for launching on TPU pods and SLURM clusters and for picking a mesh.
"""

from llm.sharding.constraints import activation_sharding, constrain, with_activation_sharding
from llm.sharding.mesh import MeshError, make_mesh, resolve_shape
from llm.sharding.rules import PRESETS, ShardingError

__all__ = [
    "PRESETS",
    "MeshError",
    "ShardingError",
    "activation_sharding",
    "constrain",
    "make_mesh",
    "resolve_shape",
    "with_activation_sharding",
]
