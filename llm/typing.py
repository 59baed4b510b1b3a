"""Shape letters used in every array name (`x_BLD`) and einsum in the package.

B  batch                      L  query / sequence length     S  key/value length
D  d_model (residual width)   V  vocabulary size             F  MLP hidden width
N  query heads                K  key/value heads              G  query heads per KV head (N // K)
H  head dimension             Y  layers (stacked by scan)
"""

from __future__ import annotations

from typing import Any

import jax

Array = jax.Array
PyTree = Any
