"""Scale-out: device meshes, the logical-axis rules table, sharded state, multi-host runs.

    mesh = make_mesh(cfg.mesh)                      # llm/sharding/mesh.py
    plan = make_plan(cfg, mesh)                     # llm/sharding/init.py (rules.py inside)
    state = init_train_state(cfg, plan, tx)         # created in its shards
    report(cfg, n_devices=256)                      # llm/sharding/memory.py, abstract

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
