"""Host batches become global arrays sharded over the mesh's data axes (8 CPU devices)."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from llm.data.device import batch_sharding, to_device


def test_batch_rows_are_sharded_over_data_and_fsdp():
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    sharding = batch_sharding(mesh)
    assert sharding.spec == PartitionSpec(("data", "fsdp"), None)
    batch = {
        "inputs": np.arange(8 * 6, dtype=np.int32).reshape(8, 6),
        "loss_mask": np.ones((8, 6), np.float32),
    }
    arrays = to_device(batch, sharding)
    assert arrays["inputs"].shape == (8, 6) and arrays["loss_mask"].dtype == np.float32
    np.testing.assert_array_equal(np.asarray(arrays["inputs"]), batch["inputs"])
    for shard in arrays["inputs"].addressable_shards:
        assert shard.data.shape == (2, 6)  # 8 rows over data x fsdp = 4 groups; tensor replicates
        np.testing.assert_array_equal(shard.data, batch["inputs"][shard.index])
    only_tensor = Mesh(np.array(jax.devices()[:2]), ("tensor",))
    assert batch_sharding(only_tensor).spec == PartitionSpec(None, None)
