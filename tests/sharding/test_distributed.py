"""Where `initialize` takes the job's coordinates from (the 2-process run is test_multiprocess)."""

from __future__ import annotations

import pytest

from llm.config import MeshConfig
from llm.sharding.distributed import coordinates, initialize

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID")
ENV += ("SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "OMPI_COMM_WORLD_SIZE")


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_config_wins_over_environment(clean_env):
    clean_env.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.9:99")
    clean_env.setenv("JAX_NUM_PROCESSES", "4")
    clean_env.setenv("JAX_PROCESS_ID", "3")
    assert coordinates(MeshConfig()) == ("10.0.0.9:99", 4, 3)
    cfg = MeshConfig(coordinator_address="h:1", num_processes=2, process_id=1)
    assert coordinates(cfg) == ("h:1", 2, 1)


def test_single_process_needs_nothing_and_bad_env_is_named(clean_env):
    info = initialize(MeshConfig())
    assert (info.index, info.count, info.devices) == (0, 1, 8)
    clean_env.setenv("JAX_COORDINATOR_ADDRESS", "h:1")
    with pytest.raises(ValueError, match="num_processes=None / process_id=None are not"):
        initialize(MeshConfig())
    clean_env.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' is not an integer"):
        initialize(MeshConfig())
