"""Activation sharding constraints that model code states with logical names.

    x_BLD = constrain(x_BLD, ("batch", "length", "act_embed"))     # in model code

    with activation_sharding(plan.mesh, plan.rules):                # around tracing
        ...

`constrain` is `jax.lax.with_sharding_constraint` with the spec looked up in the active
rules; outside an `activation_sharding` context (single-device runs, unit tests of a layer)
it returns `x` unchanged. It never checks the backend: on CPU, GPU and TPU alike the
constraint is in the traced program, so what the simulated-device tests check is what runs
on accelerators (unlike helpers that turn themselves off on CPU).

The context is read while tracing, so it must surround the trace, not the call of an
already compiled function: `with_activation_sharding(loss_fn, ...)` wraps a loss so that
the train step's trace always happens inside it, however the step is called.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding

from llm.sharding.rules import MeshAxes, ShardingError, axis_size, mesh_spec
from llm.typing import Array

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Mapping[str, MeshAxes]] | None] = (
    contextvars.ContextVar("llm_activation_sharding", default=None)
)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Mapping[str, MeshAxes]) -> Iterator[None]:
    """Makes `constrain` lay activations out on `mesh` per `rules` while inside."""
    token = _ACTIVE.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: Array, logical: tuple[str | None, ...]) -> Array:
    """`x` constrained to the mesh layout of its logical axis names (identity with no rules)."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    if len(logical) != x.ndim:
        raise ShardingError(
            f"constrain: {logical} names {len(logical)} axes, x has shape {x.shape}"
        )
    spec = mesh_spec(rules, logical)
    for size, entry, name in zip(x.shape, spec, logical, strict=True):
        if size % axis_size(mesh.shape, entry):
            raise ShardingError(
                f"activation of shape {x.shape}: axis {name!r} of size {size} is not divisible "
                f"by mesh axes {entry} of size {axis_size(mesh.shape, entry)}"
            )
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def with_activation_sharding(
    fn: Callable[..., Any], mesh: Mesh, rules: Mapping[str, MeshAxes]
) -> Callable[..., Any]:
    """`fn` that traces inside `activation_sharding(mesh, rules)` (wrap the loss function)."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with activation_sharding(mesh, rules):
            return fn(*args, **kwargs)

    return wrapped
