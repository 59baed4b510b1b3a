"""Golden logits of tiny fixed-seed models: any change to init or forward math shows here.

To regenerate (only after an intended change, and say why in the commit):
    python -m tests.model.test_golden
prints the dict below for pasting. Values were produced on CPU with jax 0.10.2.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.model import forward, init_params
from tests.model.conftest import make_cfg

VARIANTS = {
    "gpt2_like": dict(activation="gelu_tanh", qkv_bias=True, out_bias=True, mlp_bias=True),
    "llama_like": dict(
        pos_encoding="rope", norm="rmsnorm", activation="swiglu", n_kv_heads=2, tie_embeddings=False
    ),
    "alibi_post": dict(pos_encoding="alibi", norm_placement="post", qk_norm=True),
}
TOKENS = jnp.array([[3, 14, 15, 9, 26, 5, 35, 8]])

GOLDEN = {
    "gpt2_like": [
        [-0.31649897, -0.48987153, -0.85615826, 1.90844595],
        [0.20368999, -0.14055508, 0.50684857, -0.68705148],
        [-0.13053158, -0.46470276, -0.38333711, -0.54282475],
    ],
    "llama_like": [
        [-0.15126988, 0.08911281, 0.10883396, -0.61953521],
        [-0.64881778, -0.39123198, -0.68221617, -0.65433478],
        [-0.37928706, -0.02152977, -0.91046757, 0.32625246],
    ],
    "alibi_post": [
        [-0.55598944, -0.49247909, -0.33361605, 3.24640608],
        [-0.13434048, 0.30376425, 0.12974495, 0.8331936],
        [-0.37077117, 0.129042, -0.19918466, -0.46714017],
    ],
}


def golden_slice(name: str) -> np.ndarray:
    cfg = make_cfg(**VARIANTS[name])
    params = init_params(cfg, jax.random.key(42))
    logits = jax.jit(lambda p: forward(cfg, p, TOKENS).logits_BLV)(params)
    return np.asarray(logits[0, [0, 3, 7], :4], dtype=np.float64)


@pytest.mark.parametrize("name", VARIANTS)
def test_golden_logits(name):
    np.testing.assert_allclose(golden_slice(name), np.array(GOLDEN[name]), rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
    np.set_printoptions(precision=8, floatmode="fixed")
    for variant in VARIANTS:
        print(f"    {variant!r}: {golden_slice(variant).round(8).tolist()},")
