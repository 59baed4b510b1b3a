"""word2vec: skip-gram and CBOW with negative sampling, trained in JAX.

Mikolov et al. 2013a ("Efficient Estimation of Word Representations in Vector Space": CBOW and
skip-gram) and 2013b ("Distributed Representations of Words and Phrases and their
Compositionality": negative sampling, subsampling, the unigram^3/4 noise). Letters: B batch,
K negatives, C context slots (2 * window), V vocabulary, D vector width, S steps in a chunk.

Design choices:
* Two tables as in the paper and the C code: input vectors `w_VD` (the center word in
  skip-gram, the context words in CBOW) and output vectors `c_VD` (the predicted word and the
  negatives). The input table is the embedding kept; init as the C code: w uniform in
  [-0.5/D, 0.5/D], c zero.
* The loss is the formula, per example: -[log sigma(u.v) + sum_k log sigma(-u_k.v)], v the
  input vector (CBOW: the mean of the context's input vectors, gensim's `cbow_mean=1`), u the
  output vector of the true word, u_k those of K negatives drawn from unigram^0.75 (a negative
  equal to the true word is kept; the C code and gensim skip it, which changes the loss by
  under K * p(word) per example).
* Minibatches instead of the paper's one-pair Hogwild SGD: the pairs (skip-gram) or centers
  (CBOW) of an epoch are shuffled and cut into batches of `batch`, and
  `chunk` steps run in one jit'd `lax.scan` (an epoch keeps whole chunks: the last partial
  chunk's examples, redrawn every epoch, are dropped, so the scan compiles once: `meta`
  records how many, `examples_per_epoch` and `dropped_per_epoch`). The gradient is that of the
  batch's mean loss. The learning rate decays linearly as the paper's, towards lr * 1e-4 at
  the expected number of examples (kept tokens x (window + 1)); windows cut at sentence ends
  give fewer, so it stops above that floor; the optimizer
  is Adam (default: stable at any batch size) or plain SGD, both from optax.
* Negatives are drawn on device by inverse-CDF search in the noise distribution.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from llm.embeddings.corpus import (
    Flat,
    Vocab,
    context_matrix,
    keep_probability,
    noise_distribution,
)
from llm.embeddings.vectors import WordVectors

METHODS = ("sgns", "cbow")
OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass(frozen=True)
class Word2VecConfig:
    method: str = "sgns"  # "sgns" (skip-gram) or "cbow", both with negative sampling
    dim: int = 100  # D, vector width
    window: int = 5  # largest distance of a context word (each center draws 1..window)
    negatives: int = 5  # K, noise words per example
    min_count: int = 5  # rarer words are dropped before windows are formed
    sample: float = 1e-3  # subsampling threshold t (0 keeps every token)
    epochs: int = 5  # passes over the corpus
    batch: int = 4096  # pairs (sgns) or centers (cbow) per step
    lr: float = 1e-2  # starting learning rate (of the mean loss), decayed linearly to lr * 1e-4
    optimizer: str = "adam"  # "adam" or "sgd"
    chunk: int = 16  # steps per jit'd scan (one progress-bar tick)
    seed: int = 0  # init, subsampling, windows, shuffling and negatives

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"Word2VecConfig.method={self.method!r}; choose from {METHODS}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Word2VecConfig.optimizer={self.optimizer!r}; one of {OPTIMIZERS}")
        for name in ("dim", "window", "negatives", "min_count", "epochs", "batch", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"Word2VecConfig.{name}={getattr(self, name)} must be >= 1")
        if not self.lr > 0 or self.sample < 0:
            raise ValueError(f"Word2VecConfig: lr={self.lr} must be > 0, sample={self.sample} >= 0")


def negative_loss(v_BD: jax.Array, u_BD: jax.Array, un_BKD: jax.Array) -> jax.Array:
    """[B] -[log sigma(u.v) + sum_k log sigma(-u_k.v)] (Mikolov et al. 2013b, eq. 4)."""
    positive_B = jax.nn.log_sigmoid(jnp.einsum("BD,BD->B", u_BD, v_BD))
    negative_B = jax.nn.log_sigmoid(-jnp.einsum("BKD,BD->BK", un_BKD, v_BD)).sum(-1)
    return -(positive_B + negative_B)


def sgns_loss(params: dict, center_B, context_B, negative_BK) -> jax.Array:
    """[B] skip-gram loss: the center's input vector predicts the context word."""
    w_VD, c_VD = params["w"], params["c"]
    return negative_loss(w_VD[center_B], c_VD[context_B], c_VD[negative_BK])


def cbow_loss(params: dict, context_BC, mask_BC, center_B, negative_BK) -> jax.Array:
    """[B] CBOW loss: the mean input vector of the unmasked context words predicts the center."""
    w_VD, c_VD = params["w"], params["c"]
    m_BC = mask_BC.astype(w_VD.dtype)
    h_BD = jnp.einsum("BCD,BC->BD", w_VD[context_BC], m_BC)
    h_BD = h_BD / jnp.maximum(m_BC.sum(-1, keepdims=True), 1.0)
    return negative_loss(h_BD, c_VD[center_B], c_VD[negative_BK])


def sample_negatives(key: jax.Array, cdf_V: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Word ids drawn from the distribution whose cumulative sums are `cdf_V`."""
    u = jax.random.uniform(key, shape, dtype=cdf_V.dtype) * cdf_V[-1]
    return jnp.minimum(jnp.searchsorted(cdf_V, u, side="right"), cdf_V.shape[0] - 1)


def init_params(key: jax.Array, vocab_size: int, dim: int) -> dict:
    w_VD = (jax.random.uniform(key, (vocab_size, dim), jnp.float32) - 0.5) / dim
    return {"w": w_VD, "c": jnp.zeros((vocab_size, dim), jnp.float32)}


def make_optimizer(cfg: Word2VecConfig, total_steps: int) -> optax.GradientTransformation:
    schedule = optax.linear_schedule(cfg.lr, cfg.lr * 1e-4, max(total_steps, 1))
    return optax.adam(schedule) if cfg.optimizer == "adam" else optax.sgd(schedule)


def make_chunk_fn(cfg: Word2VecConfig, tx: optax.GradientTransformation, cdf_V: jax.Array):
    """jit'd (params, opt_state, key, batches [S, B, ...]) -> (params, opt_state, key, loss_S)."""

    def step(carry, batch):
        params, opt_state, key = carry
        key, sub = jax.random.split(key)
        first = next(iter(batch.values()))
        negative_BK = sample_negatives(sub, cdf_V, (first.shape[0], cfg.negatives))

        def mean_loss(p):
            if cfg.method == "sgns":
                return sgns_loss(p, batch["center"], batch["context"], negative_BK).mean()
            args = (batch["context"], batch["mask"], batch["center"], negative_BK)
            return cbow_loss(p, *args).mean()

        loss, grads = jax.value_and_grad(mean_loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, key), loss

    @jax.jit
    def run_chunk(params, opt_state, key, batches):
        (params, opt_state, key), loss_S = jax.lax.scan(step, (params, opt_state, key), batches)
        return params, opt_state, key, loss_S

    return run_chunk


def usable(n: int, batch: int, chunk: int) -> int:
    """Examples kept of n: whole chunks of `chunk` batches, so the scan compiles once."""
    return n // (batch * chunk) * (batch * chunk)


def chunk_for(cfg_chunk: int, expected_steps: int) -> int:
    """Steps per scan: `cfg_chunk`, or fewer when an epoch has fewer than two chunks' worth."""
    return max(1, min(cfg_chunk, expected_steps // 2))


def epoch_batches(cfg: Word2VecConfig, flat: Flat, keep_V, rng, chunk: int) -> tuple[dict, int]:
    """One epoch's shuffled examples, [n_batches, batch, ...] (subsampled, windows redrawn),
    and how many examples the last partial chunk dropped."""
    center_N, context_NC, mask_NC = context_matrix(flat.subsample(keep_V, rng), cfg.window, rng)
    if cfg.method == "sgns":
        rows, cols = np.nonzero(mask_NC)
        data = {"center": center_N[rows], "context": context_NC[rows, cols]}
    else:
        has = mask_NC.any(-1)
        data = {"center": center_N[has], "context": context_NC[has], "mask": mask_NC[has]}
    n = usable(len(data["center"]), cfg.batch, chunk)
    order = rng.permutation(len(data["center"]))[:n]
    shape = (n // cfg.batch, cfg.batch)
    batches = {k: v[order].reshape(*shape, *v.shape[1:]) for k, v in data.items()}
    return batches, len(data["center"]) - n


def train_word2vec(
    sentences: Sequence[Sequence[str]], cfg: Word2VecConfig, progress: bool = True
) -> WordVectors:
    """Trains on tokenised sentences (corpus.tokenize); returns the input vectors."""
    start = time.perf_counter()
    vocab = Vocab.build(sentences, cfg.min_count)
    flat = Flat.of(vocab.encode(sentences))
    keep_V = keep_probability(vocab.counts, cfg.sample)
    rng = np.random.default_rng(cfg.seed)
    cdf_V = jnp.asarray(np.cumsum(noise_distribution(vocab.counts)), jnp.float32)
    expected = int(np.sum(keep_V[flat.ids_N]) * (cfg.window + 1 if cfg.method == "sgns" else 1))
    chunk = chunk_for(cfg.chunk, expected // cfg.batch)
    batches, dropped = epoch_batches(cfg, flat, keep_V, rng, chunk)
    tx = make_optimizer(cfg, cfg.epochs * max(expected // cfg.batch, 1))
    key, init_key = jax.random.split(jax.random.key(cfg.seed))
    params = init_params(init_key, len(vocab), cfg.dim)
    opt_state, run_chunk = tx.init(params), make_chunk_fn(cfg, tx, cdf_V)
    losses, used, drops = [], [], []
    for epoch in range(cfg.epochs):
        if epoch:
            batches, dropped = epoch_batches(cfg, flat, keep_V, rng, chunk)
        n_steps = len(batches["center"])
        used.append(n_steps * cfg.batch)
        drops.append(dropped)
        bar = tqdm(range(0, n_steps, chunk), disable=not progress, desc=f"{cfg.method} {epoch}")
        for s in bar:
            part = {k: jnp.asarray(v[s : s + chunk]) for k, v in batches.items()}
            params, opt_state, key, loss_S = run_chunk(params, opt_state, key, part)
            losses.append(float(loss_S.mean()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    if not losses:
        raise ValueError(
            f"an epoch yields fewer than {chunk} batches of batch={cfg.batch}; lower batch"
        )
    meta = {"method": cfg.method, "config": dataclasses.asdict(cfg), "tokens": len(flat.ids_N),
            "examples_per_epoch": used, "dropped_per_epoch": drops,
            "final_loss": losses[-1], "train_seconds": time.perf_counter() - start}  # fmt: skip
    return WordVectors(vocab.words, np.asarray(params["w"]), vocab.counts, meta)
