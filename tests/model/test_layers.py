"""`Linear` runs its einsum as one 2-D matmul: same result as the einsum, checked specs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llm.model.layers import Linear


@pytest.mark.parametrize(
    ("spec", "x_shape", "w_shape"),
    [
        ("BLD,DNH->BLNH", (2, 3, 8), (8, 4, 5)),
        ("BLNH,NHD->BLD", (2, 3, 4, 5), (4, 5, 8)),
        ("BLF,FD->BLD", (2, 3, 6), (6, 8)),
    ],
)
def test_linear_equals_its_einsum(spec, x_shape, w_shape):
    layer = Linear(
        spec, w_shape, ("a",) * len(w_shape), bias_shape=None, std=1.0,
        dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0),
    )  # fmt: skip
    x = jax.random.normal(jax.random.key(1), x_shape)
    want = jnp.einsum(spec, x, layer.w[...])
    np.testing.assert_allclose(layer(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", ["BLD,NDH->BLNH", "BLD,DF->BFL"])
def test_linear_rejects_specs_it_cannot_run_as_a_matmul(spec):
    with pytest.raises(ValueError, match=f"Linear spec='{spec}'"):
        Linear(
            spec, (4, 4, 4) if "N" in spec else (4, 4), ("a",) * (3 if "N" in spec else 2),
            bias_shape=None, std=1.0, dtype=jnp.float32, param_dtype=jnp.float32,
            rngs=nnx.Rngs(0),
        )  # fmt: skip
