"""Sharding benchmark: per-device memory vs device count, and the collectives of each preset.

    python bench/sharding.py                 # 8 simulated CPU devices (set here if on CPU)
    python bench/sharding.py --devices 1,2,4,8 --d_model 512 --n_layers 4

Scaling on simulated devices says nothing about speed, so this measures what does carry
over to accelerators: what the compiled train step holds per device and which collectives
XLA inserted. Part 1 compiles the step (ahead of time, from abstract inputs) with FSDP over
N devices and reads `compiled.memory_analysis()`: the argument bytes (the train state shard
plus the batch shard) should fall as 1/N, next to the abstract plan of llm/sharding/memory.py.
Part 2 compiles the step once per preset on all devices and counts the collective ops in the
optimised HLO.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
sys.path.insert(0, str(Path(__file__).parents[1]))

import jax

from llm.config import load_config
from llm.sharding.constraints import with_activation_sharding
from llm.sharding.init import batch_shardings, make_plan
from llm.sharding.mesh import make_mesh
from llm.train.build import memory_plan, state_layout
from llm.train.losses import make_loss
from llm.train.optim import make_schedule
from llm.train.step import make_train_step
from llm.train.trainable import Trainable

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
PRESET_MESHES = {
    "dp": ["mesh.data=-1"],
    "fsdp": ["mesh.data=1", "mesh.fsdp=-1"],
    "fsdp_tp": ["mesh.data=1", "mesh.fsdp=-1", "mesh.tensor=2"],
    "tp_sp": ["mesh.data=-1", "mesh.tensor=2", "mesh.sequence=2"],
}


def compile_step(cfg, devices):
    """The train step compiled for `cfg.mesh` on `devices`, from abstract inputs only."""
    plan = make_plan(cfg, make_mesh(cfg.mesh, devices))
    layout = state_layout(cfg, plan, Trainable())
    loss = make_loss(cfg)
    put = batch_shardings(plan, loss.batch_axes)
    step = make_train_step(
        cfg,
        with_activation_sharding(loss, plan.mesh, plan.rules),
        layout.tx,
        make_schedule(cfg.optim, cfg.train.steps),
        state_shardings=layout.shardings,
        batch_sharding=put,
    )
    B, L = cfg.train.batch_size, cfg.train.seq_len
    batch = {
        k: jax.ShapeDtypeStruct((B, L), dt, sharding=put[k])
        for k, dt in [
            ("inputs", "int32"),
            ("targets", "int32"),
            ("segment_ids", "int32"),
            ("positions", "int32"),
            ("loss_mask", "float32"),
        ]
    }
    return step.lower(layout.abstract_sharded(), batch).compile()


def count_collectives(hlo: str) -> dict[str, int]:
    """Collective instructions in optimised HLO text (async pairs counted once, by -start)."""
    return {op: len(re.findall(rf"\s{op}(?:-start)?\(", hlo)) for op in COLLECTIVES}


def mib(n: float) -> str:
    return f"{n / 2**20:.3f}"


def memory_table(base: list[str], counts: list[int]) -> None:
    print("\n## FSDP: per-device bytes vs device count (compiled memory_analysis)\n")
    print(
        "| devices | params/dev MiB (plan) | opt state/dev MiB (plan) | step arguments MiB | "
        "x 1-device | temp MiB | output MiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    first = None
    for n in counts:
        cfg = load_config(None, [*base, "mesh.data=1", "mesh.fsdp=-1", "mesh.rules=fsdp"])
        mem = compile_step(cfg, jax.devices()[:n]).memory_analysis()
        p = memory_plan(cfg, n)
        first = first or mem.argument_size_in_bytes
        print(
            f"| {n} | {mib(p.params)} | {mib(p.optimizer)} | {mib(mem.argument_size_in_bytes)} "
            f"| {mem.argument_size_in_bytes / first:.3f} | {mib(mem.temp_size_in_bytes)} "
            f"| {mib(mem.output_size_in_bytes)} |"
        )


def collectives_table(base: list[str]) -> None:
    n = jax.device_count()
    print(f"\n## Collectives in the compiled train step ({n} devices)\n")
    print("| preset | mesh | " + " | ".join(COLLECTIVES) + " |")
    print("|---|---|" + "---:|" * len(COLLECTIVES))
    for preset, mesh in PRESET_MESHES.items():
        cfg = load_config(None, [*base, f"mesh.rules={preset}", *mesh])
        compiled = compile_step(cfg, jax.devices())
        counts = count_collectives(compiled.as_text())
        shape = make_mesh(cfg.mesh).shape
        desc = " ".join(f"{k}={v}" for k, v in shape.items() if v > 1)
        print(f"| {preset} | {desc} | " + " | ".join(str(counts[c]) for c in COLLECTIVES) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="1,2,4,8", help="device counts for the FSDP table")
    ap.add_argument("--d_model", type=int, default=256)
    ap.add_argument("--n_layers", type=int, default=4)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--seq_len", type=int, default=64)
    args = ap.parse_args()
    base = [
        "model.vocab_size=4096",
        f"model.d_model={args.d_model}",
        f"model.n_layers={args.n_layers}",
        "model.n_heads=8",
        f"model.d_ff={4 * args.d_model}",
        f"model.max_seq_len={args.seq_len}",
        f"train.batch_size={args.batch_size}",
        f"train.seq_len={args.seq_len}",
    ]
    print(f"backend {jax.default_backend()}, {jax.device_count()} devices; model {base}")
    memory_table(base, [int(x) for x in args.devices.split(",")])
    collectives_table(base)


if __name__ == "__main__":
    main()
