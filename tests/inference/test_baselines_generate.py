"""Generation from the classical baselines (`model.arch`: ngram_mlp, rnn, lstm, gru) through
the same engine and `llm generate` as the Transformer: batched greedy decoding (prompts of
different lengths, so padded prefills) equals the argmax of a full forward, token by token."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.cli import main
from llm.config import ModelConfig
from llm.inference import Engine, StopCriteria, beam, sampling
from llm.model import abstract_params, forward
from llm.tokenizers.byte import ByteTokenizer

CFGS = {
    "ngram_mlp": ModelConfig(arch="ngram_mlp", d_model=16, d_ff=32, n_layers=1,
                             ngram_context=3, tie_embeddings=False, max_seq_len=16),
    "rnn": ModelConfig(arch="rnn", d_model=16, n_layers=2, max_seq_len=16),
    "lstm": ModelConfig(arch="lstm", d_model=16, n_layers=2, max_seq_len=16),
    "gru": ModelConfig(arch="gru", d_model=16, n_layers=1, max_seq_len=16),
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


@pytest.mark.slow  # cold compile cache on a VM at load 14-22: 60-120 s per arch (warm: ~1 s)
@pytest.mark.parametrize("arch", CFGS)
def test_engine_greedy_equals_recomputing_the_prefix(arch):
    cfg, params = CFGS[arch], random_params(CFGS[arch])
    # max_len above max_seq_len: the baselines have no position table to outgrow
    engine = Engine(cfg, params, ByteTokenizer(), max_len=24)
    out = engine.generate(PROMPTS, stop=StopCriteria(max_new_tokens=8))
    for prompt, completion in zip(PROMPTS, out, strict=True):
        assert completion.token_ids == recompute_greedy(cfg, params, prompt, 8, 16), arch


@pytest.mark.slow  # cold: ~80 s at load 14-22, three CLI runs compiling a model (warm: ~2 s)
def test_llm_generate_samples_and_beam_searches_a_baseline(capsys):
    """`llm generate` with random weights of a small LSTM: greedy and beam search (which
    reruns the prompt: a recurrent state cannot roll back) each print the prompt; an int8
    cache of an ngram_mlp is refused (exit 2)."""
    model = ["model.arch=lstm", "model.d_model=16", "model.n_layers=1", "model.init_std=0.5"]
    for mode in (["--temperature", "0"], ["--num-beams", "2"]):
        capsys.readouterr()
        argv = ["generate", *model, "--prompt", "To be", "--max-new-tokens", "6", *mode]
        assert main(argv) == 0
        text = capsys.readouterr().out
        assert "To be" in text
    ngram = ["model.arch=ngram_mlp", "model.tie_embeddings=false", "model.d_model=8"]
    code = main(["generate", *ngram, "--prompt", "x", "--kv-cache", "int8"])
    assert code == 2


@pytest.mark.parametrize("arch", ["lstm", "ngram_mlp"])
def test_beam_search_first_step_log_probs_equal_the_full_forward(arch):
    """Beam search's first expansion scores the prompt's next token: for a recurrent model
    (which cannot roll its state back) it reruns the prompt; for the n-gram MLP it rolls its
    token cache back. Either way the log-probabilities equal log_softmax of a full forward's
    last position (a wrong state, e.g. the last token fed twice, moves them by far more)."""
    cfg, prompt = CFGS[arch], PROMPTS[0]
    params = random_params(cfg)
    engine = Engine(cfg, params, ByteTokenizer(), max_len=16)
    state = engine.prefill([prompt], [sampling.GREEDY])
    got = beam._first_logprobs(engine, state, prompt)
    logits = forward(cfg, params, jnp.asarray([prompt])).logits_BLV[0, -1]
    np.testing.assert_allclose(got, jax.nn.log_softmax(logits), atol=1e-5)
