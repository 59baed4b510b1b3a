"""Multi-host start-up: `jax.distributed.initialize` from the config or the environment.

    info = initialize(cfg.mesh)       # call before anything touches jax.devices()

Where the coordinates come from, first match wins:
  1. `mesh.coordinator_address` / `num_processes` / `process_id` in the config;
  2. the environment variables JAX itself reads: JAX_COORDINATOR_ADDRESS, plus
     JAX_NUM_PROCESSES and JAX_PROCESS_ID (read here; JAX reads only the address);
  3. a cluster JAX detects on its own: Cloud TPU pod slices (the TPU metadata server),
     SLURM (SLURM_JOB_ID with more than one task: SLURM_NTASKS, SLURM_PROCID, the first
     host of SLURM_STEP_NODELIST as coordinator), Open MPI, Kubernetes-launched GKE jobs;
  4. otherwise a single process: nothing to initialise.

On CPU with several processes, cross-process collectives need an implementation: we select
gloo (bundled with jaxlib), which is how the 2-process test runs on one machine.
"""

from __future__ import annotations

import dataclasses
import os

import jax

from llm.config.mesh import MeshConfig


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    index: int  # this process (0 = the one that logs)
    count: int  # processes in the job
    local_devices: int  # devices this process drives
    devices: int  # devices in the job


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _detected_cluster() -> bool:
    """True on a TPU VM or inside a multi-task SLURM / Open MPI job (JAX detects these)."""
    if os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_ACCELERATOR_TYPE"):
        return True
    if os.environ.get("SLURM_JOB_ID") and (_env_int("SLURM_NTASKS") or 1) > 1:
        return True
    return (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1


def coordinates(cfg: MeshConfig) -> tuple[str | None, int | None, int | None]:
    """(coordinator address, process count, process id) from the config, else the env."""
    address = cfg.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    count = cfg.num_processes if cfg.num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    pid = cfg.process_id if cfg.process_id is not None else _env_int("JAX_PROCESS_ID")
    return address, count, pid


def initialize(cfg: MeshConfig, *, platform: str | None = None) -> ProcessInfo:
    """Joins the job described by `cfg` / the environment (idempotent); returns who we are."""
    address, count, pid = coordinates(cfg)
    explicit = address is not None
    if explicit and (count is None or pid is None):
        raise ValueError(
            f"mesh.coordinator_address={address!r} is set but num_processes={count} / "
            f"process_id={pid} are not (set them in the config or JAX_NUM_PROCESSES / "
            "JAX_PROCESS_ID)"
        )
    multi = (explicit and count > 1) or (not explicit and _detected_cluster())
    if multi and not jax.distributed.is_initialized():
        if (platform or os.environ.get("JAX_PLATFORMS", "")).startswith("cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        if explicit:
            jax.distributed.initialize(address, num_processes=count, process_id=pid)
        else:
            jax.distributed.initialize()
    return ProcessInfo(
        index=jax.process_index(),
        count=jax.process_count(),
        local_devices=jax.local_device_count(),
        devices=jax.device_count(),
    )
