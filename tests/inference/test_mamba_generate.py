"""Generation from Mamba models (`model.arch: mamba`, pure and hybrid) through the same engine
as the Transformer: batched greedy decoding (prompts of different lengths, so padded
prefills, and rows finishing at different steps) equals the argmax of a full forward, token
by token; beam search's first step reruns the prompt (an SSM state cannot roll back)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.config import ModelConfig
from llm.inference import Engine, StopCriteria, beam, sampling
from llm.model import abstract_params, forward
from llm.tokenizers.byte import ByteTokenizer

CFGS = {
    "pure": ModelConfig(arch="mamba", d_model=16, n_layers=2, norm="rmsnorm", ssm_state=4,
                        max_seq_len=16),
    "hybrid": ModelConfig(arch="mamba", d_model=16, n_layers=2, norm="rmsnorm", ssm_state=4,
                          ssm_attention_every=2, pos_encoding="rope", n_heads=2, d_ff=32,
                          max_seq_len=24),
}  # fmt: skip
PROMPTS = [[257, 72, 105, 33, 10], [257, 65], [257, 100, 101]]


def random_params(cfg):
    """NumPy-drawn params (std 0.5: peaked logits, so argmax ties do not occur)."""
    rng = np.random.default_rng(1)
    return jax.tree.map(
        lambda x: jnp.asarray(rng.normal(0, 0.5, x.shape), x.dtype), abstract_params(cfg)
    )


def recompute_greedy(cfg, params, prompt, n, width):
    """Greedy continuation by a full forward over the whole prefix for every token (one
    zero-padded window of `width`: causal, so the padding after the prefix is never read)."""
    fwd = jax.jit(lambda p, t: forward(cfg, p, t).logits_BLV)
    ids = list(prompt)
    for _ in range(n):
        window = np.zeros((1, width), np.int32)
        window[0, : len(ids)] = ids
        ids.append(int(jnp.argmax(fwd(params, jnp.asarray(window))[0, len(ids) - 1])))
    return ids[len(prompt) :]


@pytest.mark.slow  # cold compile on a VM at load 16: 70-85 s per config (user time ~10 s)
@pytest.mark.parametrize("name", CFGS)
def test_engine_greedy_equals_recomputing_the_prefix(name):
    cfg, params = CFGS[name], random_params(CFGS[name])
    engine = Engine(cfg, params, ByteTokenizer(), max_len=16)
    out = engine.generate(PROMPTS, stop=StopCriteria(max_new_tokens=8))
    for prompt, completion in zip(PROMPTS, out, strict=True):
        assert completion.token_ids == recompute_greedy(cfg, params, prompt, 8, 16), name


def test_beam_search_first_step_reruns_the_prompt():
    """The log-probabilities after the prompt equal log_softmax of a full forward's last
    position (rolling the state back instead is refused by SSMCache.rollback)."""
    cfg, prompt = CFGS["pure"], PROMPTS[0]
    params = random_params(cfg)
    engine = Engine(cfg, params, ByteTokenizer(), max_len=16)
    state = engine.prefill([prompt], [sampling.GREEDY])
    got = beam._first_logprobs(engine, state, prompt)
    logits = forward(cfg, params, jnp.asarray([prompt])).logits_BLV[0, -1]
    np.testing.assert_allclose(got, jax.nn.log_softmax(logits), atol=1e-5)
    with pytest.raises(ValueError, match="would shrink"):
        state.cache.rollback(state.cache.lengths_B - 1)
