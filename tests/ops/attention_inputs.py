"""Random attention inputs shared by the tests in this folder."""

import jax


def random_qkv(*, B: int, L: int, S: int, N: int, K: int, H: int, seed: int = 0):
    """q [B, L, N, H] and k, v [B, S, K, H], standard normal."""
    ks = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(ks[0], (B, L, N, H)),
        jax.random.normal(ks[1], (B, S, K, H)),
        jax.random.normal(ks[2], (B, S, K, H)),
    )
