"""Speculative decoding with a draft model and with n-gram lookup: greedy output is the
target's, token for token, in ragged batches; sampled output has exactly the target's
distribution, both for the acceptance rule alone and end to end (chi-square)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from llm.config import ModelConfig
from llm.inference import GREEDY, Engine, SamplingParams, StopCriteria
from llm.inference.ngram_draft import NGramDrafter
from llm.inference.sampling import truncated_probs_reference
from llm.inference.speculative import DraftModel, Proposal, accept, speculative_generate
from llm.model import abstract_params, forward, init_params
from tests.inference.conftest import TINY

PROMPTS = [
    [256, 72, 105],
    [256, 1, 2, 3, 1, 2, 3, 1, 2],
    [256, 50, 60, 70, 80, 90, 50, 60],
    [256, *range(100, 138), 100, 101],  # 41 tokens: 7 left of max_len=48, fewer than asked
]


def truncated(cfg: ModelConfig, params, n_layers: int) -> Engine:
    """The target's first `n_layers` blocks (then its final norm and unembedding): a cheap
    draft that often agrees with the target."""
    blocks = jax.tree.map(lambda a: a[:n_layers], params["blocks"])
    return Engine(dataclasses.replace(cfg, n_layers=n_layers), {**params, "blocks": blocks},
                  max_len=48)  # fmt: skip


class NoDrafts:
    """A drafter that never proposes: every round must still emit one token."""

    max_len = None

    def start(self, target, prompts, params):
        pass

    def propose(self, history, last_B, s, limits_B, gamma):
        zeros = jnp.zeros((last_B.shape[0], gamma), jnp.int32)
        return Proposal(zeros, jnp.zeros(last_B.shape[0], jnp.int32))

    def commit(self, accepted_B, lengths_B):
        pass


@pytest.fixture(scope="module")
def greedy_tokens(engine):
    stop = StopCriteria(max_new_tokens=20)
    return [c.token_ids for c in engine.generate(PROMPTS, stop=stop)]


@pytest.mark.parametrize("kind", ["draft_model", "ngram"])
def test_greedy_is_token_identical_in_a_ragged_batch(engine, tiny_params, greedy_tokens, kind):
    drafter = DraftModel(truncated(TINY, tiny_params, 1)) if kind == "draft_model" \
        else NGramDrafter()  # fmt: skip
    got = speculative_generate(engine, drafter, PROMPTS, max_new_tokens=20, gamma=3)
    assert [r.token_ids for r in got] == greedy_tokens
    assert len(greedy_tokens[-1]) == 48 - len(PROMPTS[-1])  # the context limit was reached
    proposed, accepted = sum(r.proposed for r in got), sum(r.accepted for r in got)
    assert proposed > accepted > 0  # both acceptance and rollback were exercised
    assert max(r.tokens_per_forward for r in got) > 1.5


@pytest.mark.parametrize("sp", [GREEDY, SamplingParams(temperature=1.0, seed=3)])
def test_a_draft_equal_to_the_target_is_always_accepted(engine, tiny_params, sp):
    # p = q, so nothing is rejected; this fails if the draft cache drifts from the target's
    # (e.g. the last draft of a fully accepted round is not fed back)
    draft = DraftModel(Engine(TINY, tiny_params, max_len=48))
    got = speculative_generate(engine, draft, PROMPTS[:3], sp, max_new_tokens=20, gamma=3)
    # prefill, 4 rounds of 3 drafts + 1, a last round capped at 2 drafts: 1 + 16 + 3 = 20
    assert [r.accepted for r in got] == [r.proposed for r in got] == [14, 14, 14]
    assert [r.target_forwards for r in got] == [6, 6, 6]


def test_rounds_without_drafts_are_plain_steps(engine, greedy_tokens):
    got = speculative_generate(engine, NoDrafts(), PROMPTS[:2], max_new_tokens=20, gamma=2)
    assert [r.token_ids for r in got] == greedy_tokens[:2]
    assert [(r.proposed, r.target_forwards) for r in got] == [(0, 20), (0, 20)]


# ---- the acceptance rule alone: each row of a batch is an independent trial ----


def _emitted_distributions(q, drafts, sizes, p, n_rows):
    """Frequencies of the first and second emitted token of `n_rows` trials of `accept`."""
    p_BTV = jnp.broadcast_to(p, (n_rows, *p.shape)).astype(jnp.float32)
    q_BgV = None if q is None else jnp.broadcast_to(q, (n_rows, *q.shape)).astype(jnp.float32)
    keys = jax.random.split(jax.random.key(1), n_rows)
    n_B, next_B = jax.jit(accept)(p_BTV, q_BgV, jnp.asarray(drafts), jnp.asarray(sizes), keys)
    n_B, next_B = np.asarray(n_B), np.asarray(next_B)
    rows = np.arange(n_rows)
    first = np.where(n_B > 0, drafts[:, 0], next_B)
    second = np.where(n_B > 1, drafts[rows, 1], next_B)[n_B >= 1]  # defined when d_1 was kept
    V = p.shape[-1]
    return np.bincount(first, minlength=V), np.bincount(second, minlength=V), n_B


@pytest.mark.parametrize("kind", ["draft_model", "deterministic"])
def test_acceptance_rule_keeps_target_distribution(kind):
    rng = np.random.default_rng(0)
    V, g, n_rows = 6, 3, 40000
    p = rng.dirichlet(np.ones(V), size=g + 1)
    if kind == "draft_model":  # drafts sampled from q
        q = rng.dirichlet(np.ones(V) * 0.5, size=g)
        drafts = np.stack([rng.choice(V, size=n_rows, p=q[i]) for i in range(g)], 1)
    else:  # a fixed guess per position (n-gram lookup: a function of the context)
        q, drafts = None, np.tile(rng.integers(0, V, size=g), (n_rows, 1))
    sizes = rng.integers(0, g + 1, size=n_rows)  # drafters may propose fewer than g
    first, second, n_B = _emitted_distributions(q, drafts, sizes, p, n_rows)
    assert 0 < (n_B > 0).mean() < 1 and (n_B == sizes).any() and (n_B <= sizes).all()
    for counts, want in ((first, p[0]), (second, p[1])):
        _, pvalue = stats.chisquare(counts, counts.sum() * want)
        assert pvalue > 1e-3, (counts / counts.sum(), want)


def test_acceptance_rule_is_greedy_for_one_hot_targets():
    p = np.eye(5)[[2, 4, 0]]  # target argmaxes 2, 4, then 0
    drafts = np.array([[2, 4], [2, 1], [3, 4]])
    sizes = np.array([2, 2, 1])
    keys = jax.random.split(jax.random.key(0), 3)
    n_B, next_B = accept(jnp.asarray(np.stack([p] * 3), jnp.float32), None,
                         jnp.asarray(drafts), jnp.asarray(sizes), keys)  # fmt: skip
    assert np.asarray(n_B).tolist() == [2, 1, 0]
    assert np.asarray(next_B).tolist() == [0, 4, 2]


# ---- end to end on a toy vocabulary: the joint law of four sampled tokens ----

TOY = ModelConfig(
    vocab_size=4, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, max_seq_len=16,
    pos_encoding="rope", norm="rmsnorm", activation="swiglu", init_std=0.3,
)  # fmt: skip
TOY_PROMPT = [0, 1, 2, 3, 0, 1, 2]  # every token occurs, so n-gram lookup always proposes
N_NEW = 4


def exact_joint(params, sp: SamplingParams) -> np.ndarray:
    """P(t1..t4) of the target under `sp`, from full forward passes over all prefixes."""
    V = TOY.vocab_size
    prefixes = np.array(np.meshgrid(*[range(V)] * (N_NEW - 1), indexing="ij")).reshape(3, -1).T
    tokens = np.concatenate([np.tile(TOY_PROMPT, (len(prefixes), 1)), prefixes], 1)
    logits = np.asarray(forward(TOY, params, jnp.asarray(tokens)).logits_BLV, np.float64)
    P = len(TOY_PROMPT)
    probs = np.array([[truncated_probs_reference(row, sp) for row in seq[P - 1 :]]
                      for seq in logits])  # fmt: skip  # [V^3 prefixes, 4 positions, V]
    joint = np.ones([V] * N_NEW)
    for index in np.ndindex(*joint.shape):
        seq = np.ravel_multi_index(index[:-1], [V] * (N_NEW - 1))
        joint[index] = np.prod([probs[seq, i, t] for i, t in enumerate(index)])
    return joint


def chi_square_pvalue(samples: np.ndarray, joint: np.ndarray) -> float:
    """Goodness of fit of sampled sequences to `joint`; cells expecting < 5 are pooled."""
    counts = np.zeros(joint.size)
    np.add.at(counts, np.ravel_multi_index(samples.T, joint.shape), 1)
    expected = joint.ravel() * len(samples)
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


@pytest.mark.parametrize(
    ("kind", "sp"),
    [
        ("ngram", SamplingParams(temperature=1.0)),
        ("ngram", SamplingParams(temperature=0.7, top_k=3)),
        ("draft_model", SamplingParams(temperature=1.0)),
    ],
)
def test_sampled_sequences_follow_the_target(kind, sp):
    params = init_params(TOY, jax.random.key(3))
    target = Engine(TOY, params, max_len=16)
    if kind == "ngram":
        drafter = NGramDrafter(max_n=2)
    else:  # the target with noisy weights: both acceptance and residual carry weight
        noise = init_params(TOY, jax.random.key(4))
        noisy = jax.tree.map(lambda a, e: a + 0.3 * e, params, noise)
        drafter = DraftModel(Engine(TOY, noisy, max_len=16))
    n_rows = 4096
    rows = [dataclasses.replace(sp, seed=i) for i in range(n_rows)]
    got = speculative_generate(target, drafter, [TOY_PROMPT] * n_rows, rows,
                               max_new_tokens=N_NEW, gamma=2)  # fmt: skip
    proposed, accepted = sum(r.proposed for r in got), sum(r.accepted for r in got)
    assert proposed > accepted > 0.1 * proposed
    samples = np.array([r.token_ids for r in got])
    assert chi_square_pvalue(samples, exact_joint(params, sp)) > 1e-3


# ---- bad input ----


def test_bad_arguments_raise(engine, tiny_params):
    draft = DraftModel(truncated(TINY, tiny_params, 1))
    with pytest.raises(ValueError, match="gamma=0"):
        speculative_generate(engine, draft, [[1, 2]], gamma=0)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        speculative_generate(engine, draft, [[1, 2]], max_new_tokens=0)
    with pytest.raises(ValueError, match="no penalties"):
        speculative_generate(engine, draft, [[1, 2]], SamplingParams(repetition_penalty=1.2))
    with pytest.raises(ValueError, match="one SamplingParams each"):
        speculative_generate(engine, draft, [[1, 2]], [SamplingParams()] * 2)
    wide = dataclasses.replace(TINY, vocab_size=300)
    zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract_params(wide))
    other = Engine(wide, zeros, max_len=48)
    with pytest.raises(ValueError, match="vocabularies differ"):
        speculative_generate(engine, DraftModel(other), [[1, 2]])
