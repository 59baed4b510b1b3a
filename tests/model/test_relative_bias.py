"""T5's relative position buckets against transformers' implementation, and the bias lookup."""

import jax.numpy as jnp
import numpy as np
import pytest

from llm.model.relative_bias import relative_bias, relative_bucket

DELTAS = np.arange(-400, 401)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("buckets, max_distance", [(32, 128), (8, 12), (6, 7)])
def test_buckets_equal_transformers(bidirectional, buckets, max_distance):
    import torch
    from transformers.models.t5.modeling_t5 import T5Attention

    ref = T5Attention._relative_position_bucket(
        torch.tensor(DELTAS), bidirectional=bidirectional, num_buckets=buckets,
        max_distance=max_distance,
    ).numpy()  # fmt: skip
    ours = relative_bucket(jnp.asarray(DELTAS), bidirectional=bidirectional,
                           num_buckets=buckets, max_distance=max_distance)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(ours), ref)
    assert ours.min() == 0 and ours.max() == buckets - 1


def test_causal_buckets_ignore_the_future_and_grow_with_distance():
    ours = np.asarray(relative_bucket(jnp.asarray(DELTAS), bidirectional=False, num_buckets=32,
                                      max_distance=128))  # fmt: skip
    assert (ours[DELTAS >= 0] == 0).all()
    past = ours[DELTAS <= 0][::-1]  # distance 0, 1, 2, ...
    assert (np.diff(past) >= 0).all() and (past[:16] == np.arange(16)).all()


def test_bias_reads_the_table_per_head():
    table_RN = jnp.arange(8 * 3, dtype=jnp.float32).reshape(8, 3)
    pos_BL = jnp.array([[0, 1, 2, 3]])
    bias_BNLS = relative_bias(table_RN, pos_BL, pos_BL, bidirectional=True, max_distance=12)
    assert bias_BNLS.shape == (1, 3, 4, 4)
    bucket_LS = relative_bucket(pos_BL[0][None, :] - pos_BL[0][:, None], bidirectional=True,
                                num_buckets=8, max_distance=12)  # fmt: skip
    np.testing.assert_array_equal(bias_BNLS[0, 2], table_RN[bucket_LS, 2])
