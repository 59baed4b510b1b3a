"""GloVe: global word vectors from a weighted least-squares fit of log co-occurrence counts.

Pennington, Socher and Manning 2014, "GloVe: Global Vectors for Word Representation". Letters:
B batch of nonzero entries, V vocabulary, D vector width, S steps in a chunk.

Design choices (each the paper's unless said):
* Co-occurrence counts X_ij over a symmetric window of `window` words inside a sentence, each
  pair weighted 1/distance (section 4.2); no subsampling (every token counts).
* Loss J = sum_{ij: X_ij > 0} f(X_ij) (w_i . w~_j + b_i + b~_j - log X_ij)^2 (eq. 8) with
  f(x) = (x / x_max)^alpha below x_max and 1 above (eq. 9), x_max = 100, alpha = 3/4.
* AdaGrad over the nonzero entries, shuffled each epoch (section 4.2); the squared gradient
  sums start at 1 as in the authors' C code (`gradsq` initialised to 1). Entries are taken
  `batch` at a time (the batch's summed loss), `chunk` steps per jit'd `lax.scan` (whole
  chunks per epoch, as word2vec.py), where the paper updates one entry at a time: a frequent
  word then moves once per batch instead of once per entry, so the rate is 0.25, not the
  paper's 0.05 (measured on KJV + Shakespeare: 0.05 at batch 8192 still gave near-random
  neighbours after 3 epochs; 0.25 gives king -> richard, henry, edward, prince in 5).
* Init uniform in [-0.5/D, 0.5/D] for vectors and biases (the C code); the kept vector of a
  word is w + w~ (section 4.2).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse
from tqdm import tqdm

from llm.embeddings.corpus import Flat, Vocab
from llm.embeddings.vectors import WordVectors
from llm.embeddings.word2vec import chunk_for, usable


@dataclasses.dataclass(frozen=True)
class GloVeConfig:
    dim: int = 100  # D, vector width
    window: int = 10  # co-occurrence window (each side), pairs weighted 1/distance
    min_count: int = 5  # rarer words are dropped before counting
    x_max: float = 100.0  # weighting function cutoff
    alpha: float = 0.75  # weighting function exponent
    epochs: int = 10  # passes over the nonzero entries
    batch: int = 8192  # nonzero entries per step
    lr: float = 0.25  # AdaGrad learning rate (the paper's 0.05 is per entry, not per batch)
    chunk: int = 16  # steps per jit'd scan (one progress-bar tick)
    seed: int = 0  # init and shuffling

    def __post_init__(self):
        for name in ("dim", "window", "min_count", "epochs", "batch", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"GloVeConfig.{name}={getattr(self, name)} must be >= 1")
        if not (self.x_max > 0 and self.alpha >= 0 and self.lr > 0):
            raise ValueError(f"GloVeConfig: {self.x_max=} and {self.lr=} must be > 0, alpha >= 0")


def cooccurrence(flat: Flat, vocab_size: int, window: int) -> scipy.sparse.csr_matrix:
    """[V, V] symmetric X_ij = sum over pairs of i and j at distance d <= window, same sentence,
    of 1/d (every pair in both directions)."""
    n = len(flat.ids_N)
    rows, cols, vals = [], [], []
    for d in range(1, window + 1):
        i = np.arange(max(n - d, 0))
        same = flat.sentence_N[i] == flat.sentence_N[i + d]
        a, b = flat.ids_N[i[same]], flat.ids_N[i[same] + d]
        rows += [a, b]
        cols += [b, a]
        vals.append(np.full(2 * len(a), 1.0 / d))
    shape = (vocab_size, vocab_size)
    coo = scipy.sparse.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=shape
    )
    return coo.tocsr()  # sums duplicate entries


def weight(x: jax.Array, x_max: float, alpha: float) -> jax.Array:
    """f(x) = (x / x_max)^alpha for x < x_max, else 1 (eq. 9)."""
    return jnp.where(x < x_max, (x / x_max) ** alpha, 1.0)


def glove_loss(params: dict, i_B, j_B, x_B, x_max: float, alpha: float) -> jax.Array:
    """[B] f(X_ij) (w_i . w~_j + b_i + b~_j - log X_ij)^2, the terms of eq. 8."""
    diff_B = (
        jnp.einsum("BD,BD->B", params["w"][i_B], params["wt"][j_B])
        + params["b"][i_B]
        + params["bt"][j_B]
        - jnp.log(x_B)
    )
    return weight(x_B, x_max, alpha) * diff_B**2


def init_params(key: jax.Array, vocab_size: int, dim: int) -> dict:
    keys = jax.random.split(key, 4)
    shapes = {
        "w": (vocab_size, dim),
        "wt": (vocab_size, dim),
        "b": (vocab_size,),
        "bt": (vocab_size,),
    }
    return {
        name: (jax.random.uniform(k, shape, jnp.float32) - 0.5) / dim
        for k, (name, shape) in zip(keys, shapes.items(), strict=True)
    }


def make_chunk_fn(cfg: GloVeConfig, tx: optax.GradientTransformation):
    """jit'd (params, opt_state, batches [S, B]) -> (params, opt_state, loss_S)."""

    def step(carry, batch):
        params, opt_state = carry
        fn = lambda p: glove_loss(p, *batch, cfg.x_max, cfg.alpha).sum()  # noqa: E731
        loss, grads = jax.value_and_grad(fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    @jax.jit
    def run_chunk(params, opt_state, batches):
        (params, opt_state), loss_S = jax.lax.scan(step, (params, opt_state), batches)
        return params, opt_state, loss_S

    return run_chunk


def train_glove(
    sentences: Sequence[Sequence[str]], cfg: GloVeConfig, progress: bool = True
) -> WordVectors:
    """Trains on tokenised sentences (corpus.tokenize); returns w + w~ per word."""
    start = time.perf_counter()
    vocab = Vocab.build(sentences, cfg.min_count)
    x = cooccurrence(Flat.of(vocab.encode(sentences)), len(vocab), cfg.window).tocoo()
    chunk = chunk_for(cfg.chunk, len(x.data) // cfg.batch)
    n = usable(len(x.data), cfg.batch, chunk)
    if n == 0:
        raise ValueError(f"{len(x.data)} nonzero co-occurrences < {chunk} batches of "
                         f"batch={cfg.batch}; lower batch")  # fmt: skip
    tx = optax.adagrad(cfg.lr, initial_accumulator_value=1.0, eps=0.0)
    params = init_params(jax.random.key(cfg.seed), len(vocab), cfg.dim)
    opt_state, run_chunk = tx.init(params), make_chunk_fn(cfg, tx)
    rng, losses = np.random.default_rng(cfg.seed), []
    data = (x.row.astype(np.int32), x.col.astype(np.int32), x.data.astype(np.float32))
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(x.data))[:n].reshape(-1, cfg.batch)
        total = 0.0
        bar = tqdm(range(0, len(order), chunk), disable=not progress, desc=f"glove {epoch}")
        for s in bar:
            batches = tuple(jnp.asarray(a[order[s : s + chunk]]) for a in data)
            params, opt_state, loss_S = run_chunk(params, opt_state, batches)
            total += float(loss_S.sum())
        losses.append(total / n)
    meta = {"method": "glove", "config": dataclasses.asdict(cfg), "nonzero": len(x.data),
            "used_per_epoch": n, "dropped_per_epoch": len(x.data) - n,  # a new draw each epoch
            "final_loss": losses[-1], "train_seconds": time.perf_counter() - start}  # fmt: skip
    vectors = np.asarray(params["w"] + params["wt"])
    return WordVectors(vocab.words, vectors, vocab.counts, meta)
