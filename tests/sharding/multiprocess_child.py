"""One of two JAX processes (4 simulated CPU devices each) training the tiny model with FSDP.

    python multiprocess_child.py PROCESS_ID PORT RUN_DIR OUT_JSON

The mesh is fsdp=4 (ICI) x dcn_fsdp=2 (the two processes), which takes the multi-slice path
of `make_mesh` (`create_hybrid_device_mesh` with processes as granules) and lays out the same
8-way FSDP axis as the single-process run. Steps 1-2, a checkpoint every process writes its
shards of, a restore of that checkpoint into a fresh state, step 3; process 0 writes the
losses and the final params to OUT_JSON. Run by test_multiprocess.py, which sets
JAX_PLATFORMS and XLA_FLAGS.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "train")]

import jax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from sharding_fixtures import batches, preset_config  # noqa: E402

from llm.checkpoint import Checkpointer  # noqa: E402
from llm.data.device import to_device  # noqa: E402
from llm.sharding.distributed import initialize  # noqa: E402
from llm.sharding.init import batch_shardings, make_plan  # noqa: E402
from llm.sharding.mesh import make_mesh  # noqa: E402
from llm.train.build import init_train_state, state_layout  # noqa: E402
from llm.train.losses import make_loss  # noqa: E402
from llm.train.optim import make_schedule  # noqa: E402
from llm.train.step import make_train_step  # noqa: E402
from llm.train.trainable import Trainable  # noqa: E402


def main(pid: int, port: int, run_dir: str, out: str) -> None:
    cfg = preset_config(
        "fsdp",
        "optim.name=sgd",
        "mesh.fsdp=4",  # fsdp = 4 devices per process (ICI) x 2 processes (DCN) = 8
        "mesh.dcn_fsdp=2",
        f"mesh.coordinator_address=127.0.0.1:{port}",
        "mesh.num_processes=2",
        f"mesh.process_id={pid}",
    )
    info = initialize(cfg.mesh)
    assert (info.index, info.count, info.local_devices, info.devices) == (pid, 2, 4, 8), info
    mesh = make_mesh(cfg.mesh)
    assert dict(mesh.shape)["fsdp"] == 8, mesh
    # DCN is the outer part of the axis: process 0 holds the first 4 positions
    assert [d.process_index for d in mesh.devices.flat] == [0] * 4 + [1] * 4
    plan = make_plan(cfg, mesh)
    layout = state_layout(cfg, plan, Trainable())
    loss = make_loss(cfg)
    put = batch_shardings(plan, loss.batch_axes)
    schedule = make_schedule(cfg.optim, cfg.train.steps)
    step = make_train_step(
        cfg, loss, layout.tx, schedule, state_shardings=layout.shardings, batch_sharding=put
    )
    rows = cfg.train.batch_size // info.count  # this process's rows of every global batch
    local = [{k: v[pid * rows : (pid + 1) * rows] for k, v in b.items()} for b in batches(cfg, 3)]
    state, losses = init_train_state(cfg, layout), []
    for batch in local[:2]:
        state, metrics = step(state, to_device(batch, put))
        losses.append(float(metrics["loss"]))
    ckpt = Checkpointer(run_dir, keep=1, keep_best=0, async_save=False)
    ckpt.save(state, data_state={"index": 2}, meta={})
    ckpt.wait()
    del state
    restored = ckpt.restore(layout.abstract_sharded())
    state = restored.state
    for batch in local[restored.data_state["index"] :]:
        state, metrics = step(state, to_device(batch, put))
        losses.append(float(metrics["loss"]))
    params = multihost_utils.process_allgather(state.params, tiled=True)
    ckpt.close()
    if pid == 0:
        flat = [x.tolist() for x in jax.tree.leaves(params)]
        Path(out).write_text(
            json.dumps({"losses": losses, "params": flat, "compiles": step._cache_size()})
        )


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
