"""Host batches -> global device arrays with the batch dimension sharded over the data axes.

Each JAX process holds only its own rows (see pipeline.py); `jax.make_array_from_process_local_data`
assembles them into one global array of [B, L] whose rows are laid out over the mesh's data-parallel
axes, without any process ever materialising the global batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXES = ("data", "fsdp", "expert")  # mesh axes that split the batch (FSDP, MoE's EP too)


def batch_sharding(mesh: Mesh, data_axes: tuple[str, ...] = DATA_AXES) -> NamedSharding:
    """[B, L] sharding: B over whichever of `data_axes` the mesh has, L replicated."""
    axes = tuple(a for a in data_axes if a in mesh.axis_names)
    return NamedSharding(mesh, PartitionSpec(axes or None, None))


def to_device(
    batch: dict[str, np.ndarray], sharding: NamedSharding | dict[str, NamedSharding]
) -> dict[str, jax.Array]:
    """This process's rows of each [B / P, ...] array -> global [B, ...] jax arrays.

    `sharding` is one sharding for every leaf, or one per leaf (a loss's `batch_axes` laid
    out by `llm.sharding.init.batch_shardings`: `[B]`, `[B, L]` and `[B, 2, L]` leaves differ).
    """
    if isinstance(sharding, NamedSharding):
        sharding = dict.fromkeys(batch, sharding)
    return {k: jax.make_array_from_process_local_data(sharding[k], v) for k, v in batch.items()}
