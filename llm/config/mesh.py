"""The device mesh config: named parallelism axes and their sizes."""

from __future__ import annotations

from llm.config.base import check, config_class


@config_class
class MeshConfig:
    """Device mesh axis sizes; -1 means "all remaining devices" (at most one axis)."""

    data: int = -1  # data-parallel replicas
    fsdp: int = 1  # parameter/optimizer-state sharding (ZeRO-3 style)
    tensor: int = 1  # tensor (model) parallelism within a layer
    sequence: int = 1  # sequence/context parallelism

    def __post_init__(self) -> None:
        sizes = {k: getattr(self, k) for k in ("data", "fsdp", "tensor", "sequence")}
        for key, size in sizes.items():
            check(size == -1 or size > 0, key, f"must be positive or -1, got {size}")
        check(
            list(sizes.values()).count(-1) <= 1,
            "data",
            "at most one mesh axis may be -1",
        )
