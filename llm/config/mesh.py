"""The device mesh config: named parallelism axes, their sizes, the rules preset, multi-host.

Each mesh axis has an ICI size (within a TPU slice / GPU node, fast interconnect) and a DCN
size (across slices / nodes, data-centre network); the mesh axis is their product. Sizes are
resolved against the real device count by `llm.sharding.mesh.resolve_shape` (-1 = the rest).
"""

from __future__ import annotations

from typing import Literal

from llm.config.base import check, config_class

MESH_AXES = ("data", "fsdp", "tensor", "sequence", "expert")
RulesPreset = Literal["dp", "fsdp", "fsdp_tp", "tp_sp"]


@config_class
class MeshConfig:
    """Device mesh axis sizes; -1 means "all remaining devices" (at most one ICI, one DCN)."""

    data: int = -1  # data-parallel replicas within a slice/node (params replicated)
    fsdp: int = 1  # parameter/optimizer-state sharding within a slice/node (ZeRO-3 style)
    tensor: int = 1  # tensor (model) parallelism within a layer (heads, MLP width, vocab)
    sequence: int = 1  # sequence/context parallelism of activations (K/V all-gathered)
    expert: int = 1  # expert parallelism for mixture-of-experts layers
    dcn_data: int = 1  # data-parallel replicas across slices/nodes (over the DCN)
    dcn_fsdp: int = 1  # fsdp sharding across slices/nodes (usually 1: all-gathers are costly)
    dcn_tensor: int = 1  # tensor parallelism across slices/nodes (almost never > 1)
    dcn_sequence: int = 1  # sequence parallelism across slices/nodes
    dcn_expert: int = 1  # expert parallelism across slices/nodes
    rules: RulesPreset = "fsdp"  # logical-axis rules preset (llm/sharding/rules.py)
    coordinator_address: str | None = None  # "host:port" of process 0; null = env/auto-detect
    num_processes: int | None = None  # JAX processes in the job; null = env/auto-detect
    process_id: int | None = None  # this process's index; null = env/auto-detect

    def __post_init__(self) -> None:
        for prefix in ("", "dcn_"):
            sizes = {prefix + a: getattr(self, prefix + a) for a in MESH_AXES}
            for key, size in sizes.items():
                check(size == -1 or size > 0, key, f"must be positive or -1, got {size}")
            rest = [k for k, s in sizes.items() if s == -1]
            check(len(rest) <= 1, prefix + "data", f"at most one mesh axis may be -1, got {rest}")
        check(
            self.num_processes is None or self.num_processes > 0,
            "num_processes",
            "must be positive or null",
        )
        check(
            self.process_id is None
            or (self.process_id >= 0 and (self.num_processes or 1 << 30) > self.process_id),
            "process_id",
            f"must be in [0, num_processes), got {self.process_id}",
        )
        check(
            self.coordinator_address is None or ":" in self.coordinator_address,
            "coordinator_address",
            f"must be host:port, got {self.coordinator_address!r}",
        )

    def ici(self) -> dict[str, int]:
        return {a: getattr(self, a) for a in MESH_AXES}

    def dcn(self) -> dict[str, int]:
        return {a: getattr(self, "dcn_" + a) for a in MESH_AXES}
