"""Build the device mesh from `MeshConfig`: five named axes, ICI x DCN, validated up front.

    mesh = make_mesh(cfg.mesh)                 # all of jax.devices()
    shape = resolve_shape(cfg.mesh, 256)       # {"data": ..., "fsdp": ...}: no devices needed

Axis order is (data, fsdp, tensor, sequence, expert), slowest-varying first: the last axes
get neighbouring devices, so tensor/sequence collectives (every layer, latency bound) run over
the closest links and data-parallel gradient reductions (once per step) over the farthest.
DCN sizes multiply the ICI sizes; `create_hybrid_device_mesh` puts each DCN slice (a TPU
slice, or a process on GPU/CPU) on contiguous positions of the DCN part of each axis.

Axis types are `AxisType.Auto` on purpose: GSPMD propagates shardings from the jit
`in_shardings`/`out_shardings` and our `with_sharding_constraint` calls, and the model code
stays free of per-op sharding annotations. JAX 0.10's default for `jax.make_mesh` is
`Explicit` (sharding-in-types), which would require every einsum to state its output
sharding; we do not use it.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from llm.config.mesh import MESH_AXES, MeshConfig


class MeshError(ValueError):
    """The mesh config cannot be laid out on the available devices."""


def _fill(sizes: dict[str, int], total: int, what: str) -> dict[str, int]:
    """Replaces one -1 with total / product(others); checks the product equals `total`."""
    known = math.prod(s for s in sizes.values() if s != -1)
    if total % known:
        raise MeshError(
            f"mesh: {what} sizes {sizes} multiply to {known}, which does not divide {total}"
        )
    filled = {a: (total // known if s == -1 else s) for a, s in sizes.items()}
    if math.prod(filled.values()) != total:
        raise MeshError(
            f"mesh: {what} sizes {sizes} multiply to {known} but there are {total} "
            f"{what} devices; set one axis to -1 or make the sizes multiply to {total}"
        )
    return filled


def resolve_ici_dcn(
    cfg: MeshConfig, n_devices: int, n_slices: int | None = None
) -> tuple[dict[str, int], dict[str, int]]:
    """(ICI sizes, DCN sizes) with -1 resolved, for `n_devices` devices in `n_slices` slices.

    A slice is a TPU slice, or one process on GPU/CPU; a DCN size of -1 needs `n_slices`.
    """
    dcn = cfg.dcn()
    if -1 in dcn.values():
        if n_slices is None:
            raise MeshError("mesh: a dcn_* size of -1 needs the slice count (real devices)")
        dcn = _fill(dcn, n_slices, "DCN (slices/processes)")
    n_dcn = math.prod(dcn.values())
    if n_devices % n_dcn:
        raise MeshError(
            f"mesh: DCN sizes {dcn} multiply to {n_dcn}, which does not divide {n_devices} devices"
        )
    ici = _fill(cfg.ici(), n_devices // n_dcn, "per-slice (ICI)")
    return ici, dcn


def resolve_shape(cfg: MeshConfig, n_devices: int) -> dict[str, int]:
    """Mesh axis sizes (ICI x DCN) for `n_devices` devices; raises MeshError if impossible."""
    ici, dcn = resolve_ici_dcn(cfg, n_devices)
    return {a: ici[a] * dcn[a] for a in MESH_AXES}


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
    """A `Mesh` over `devices` (default: all) with axes MESH_AXES, Auto axis types."""
    devices = list(jax.devices() if devices is None else devices)
    ici, dcn = resolve_ici_dcn(cfg, len(devices), n_slices(devices))
    ici_shape = [ici[a] for a in MESH_AXES]
    dcn_shape = [dcn[a] for a in MESH_AXES]
    if math.prod(dcn_shape) > 1:
        grid = mesh_utils.create_hybrid_device_mesh(
            ici_shape,
            dcn_shape,
            devices,
            process_is_granule=devices[0].platform != "tpu",
            allow_split_physical_axes=True,
        )
    elif devices[0].platform == "tpu":
        grid = mesh_utils.create_device_mesh(ici_shape, devices, allow_split_physical_axes=True)
    else:  # CPU / GPU: devices in process order, so each process's devices are contiguous
        grid = np.array(devices, dtype=object).reshape(ici_shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def n_slices(devices: list) -> int:
    """Distinct TPU slices (`slice_index`) or, elsewhere, distinct processes among `devices`."""
    tpu = devices[0].platform == "tpu"
    return len({getattr(d, "slice_index", 0) if tpu else d.process_index for d in devices})


def describe(mesh: Mesh) -> str:
    """One line such as "8 devices: data=1 fsdp=8 tensor=1 sequence=1 expert=1"."""
    sizes = " ".join(f"{a}={n}" for a, n in mesh.shape.items())
    return f"{mesh.devices.size} devices: {sizes}"
