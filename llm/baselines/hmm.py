"""Discrete hidden Markov model: forward algorithm, Viterbi, Baum-Welch, and an HMM LM.

K hidden states, V observed symbols (token ids). Rabiner (1989), "A tutorial on hidden Markov
models and selected applications in speech recognition", is the reference for every routine:
- `forward_logspace` / `viterbi`: the forward recursion and the max-product recursion in log
  space (sec. III-A problem 1, III-B problem 2), exact for any sequence length. The teaching
  versions: one sequence, a `logsumexp` (or `max`) over K x K per step.
- `forward_scaled` / `baum_welch`: the scaled forward-backward of Rabiner sec. V-A over a
  batch of B sequences at once (one [B, K] x [K, K] product per step, so Python's per-step
  cost is shared by B sequences). The scale c_t = p(x_t | x_<t) is also the HMM's next-token
  probability, so the scaled forward doubles as the language model's `logprobs`. EM
  re-estimates start, transition and emission from the expected counts (sec. III-C,
  eq. 40), with `smoothing` pseudo-counts added so no probability becomes exactly zero
  (a byte never seen in training still gets mass in validation). EM never decreases the
  training likelihood (Baum et al. 1970; Dempster, Laird & Rubin 1977) when `smoothing` = 0.
- `HMMLanguageModel`: trained on chunks of the training stream, it scores each held-out
  document from its first token (BOS) on, like the n-gram models (llm/baselines/heldout.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp
from tqdm import tqdm

from llm.baselines.ngram_counts import Documents


@dataclass(frozen=True)
class HMM:
    """Parameters as probabilities (rows sum to one)."""

    start_K: np.ndarray  # [K] p(z_0 = k)
    trans_KK: np.ndarray  # [K, K] p(z_t = j | z_{t-1} = i), row i
    emit_KV: np.ndarray  # [K, V] p(x_t = v | z_t = k)

    def __post_init__(self):
        K = self.emit_KV.shape[0]
        if self.start_K.shape != (K,) or self.trans_KK.shape != (K, K):
            raise ValueError(
                f"HMM shapes disagree: start {self.start_K.shape}, trans "
                f"{self.trans_KK.shape}, emit {self.emit_KV.shape}"
            )
        for name, p in (("start", self.start_K), ("trans", self.trans_KK), ("emit", self.emit_KV)):
            if np.any(p < 0) or not np.allclose(p.sum(-1), 1.0, atol=1e-8):
                raise ValueError(f"HMM {name} probabilities must be >= 0 and sum to one per row")

    @property
    def n_states(self) -> int:
        return len(self.start_K)


def random_hmm(n_states: int, n_symbols: int, seed: int = 0, concentration: float = 1.0) -> HMM:
    """Dirichlet(concentration) rows: a random starting point for EM or a model to sample."""
    rng = np.random.default_rng(seed)

    def rows(*shape: int) -> np.ndarray:
        return rng.dirichlet(np.full(shape[-1], concentration), size=shape[:-1])

    return HMM(rows(n_states), rows(n_states, n_states), rows(n_states, n_symbols))


def sample(hmm: HMM, length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(states [T], observations [T]) drawn from the model."""
    rng = np.random.default_rng(seed)
    z = np.zeros(length, np.int64)
    z[0] = rng.choice(hmm.n_states, p=hmm.start_K)
    for t in range(1, length):
        z[t] = rng.choice(hmm.n_states, p=hmm.trans_KK[z[t - 1]])
    u = rng.random(length)[:, None]
    x = (np.cumsum(hmm.emit_KV[z], axis=1) < u).sum(1)
    return z, np.minimum(x, hmm.emit_KV.shape[1] - 1)


def forward_logspace(hmm: HMM, obs_T: np.ndarray) -> np.ndarray:
    """[T, K] log alpha_t(k) = log p(x_0..x_t, z_t = k); log p(x) = logsumexp(last row)."""
    with np.errstate(divide="ignore"):
        log_a, log_b = np.log(hmm.trans_KK), np.log(hmm.emit_KV)
        alpha = np.log(hmm.start_K) + log_b[:, obs_T[0]]
    out = [alpha]
    for x in obs_T[1:]:
        alpha = logsumexp(alpha[:, None] + log_a, axis=0) + log_b[:, x]
        out.append(alpha)
    return np.stack(out)


def log_likelihood(hmm: HMM, obs_T: np.ndarray) -> float:
    """log p(x_0 .. x_{T-1}) by the log-space forward algorithm."""
    return float(logsumexp(forward_logspace(hmm, obs_T)[-1]))


def viterbi(hmm: HMM, obs_T: np.ndarray) -> tuple[np.ndarray, float]:
    """(most probable state path [T], its joint log-probability log p(x, z))."""
    with np.errstate(divide="ignore"):
        log_a, log_b = np.log(hmm.trans_KK), np.log(hmm.emit_KV)
        delta = np.log(hmm.start_K) + log_b[:, obs_T[0]]
    back = []
    for x in obs_T[1:]:
        scores_KK = delta[:, None] + log_a  # [from, to]
        back.append(np.argmax(scores_KK, axis=0))
        delta = scores_KK[back[-1], np.arange(hmm.n_states)] + log_b[:, x]
    path = [int(np.argmax(delta))]
    for pointers in reversed(back):
        path.append(int(pointers[path[-1]]))
    return np.array(path[::-1]), float(np.max(delta))


def forward_scaled(hmm: HMM, obs_BT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(alpha_TBK normalised per step, scales c_TB = p(x_t | x_<t)) for B equal-length rows."""
    B, T = obs_BT.shape
    alpha_TBK = np.empty((T, B, hmm.n_states))
    c_TB = np.empty((T, B))
    a = hmm.start_K[None, :] * hmm.emit_KV[:, obs_BT[:, 0]].T
    for t in range(T):
        if t:
            a = (alpha_TBK[t - 1] @ hmm.trans_KK) * hmm.emit_KV[:, obs_BT[:, t]].T
        c_TB[t] = a.sum(1)
        alpha_TBK[t] = a / c_TB[t][:, None]
    return alpha_TBK, c_TB


def backward_scaled(hmm: HMM, obs_BT: np.ndarray, c_TB: np.ndarray) -> np.ndarray:
    """[T, B, K] beta_t scaled by the same c_t (Rabiner eq. 94), so alpha * beta = gamma."""
    B, T = obs_BT.shape
    beta_TBK = np.empty((T, B, hmm.n_states))
    beta_TBK[-1] = 1.0
    for t in range(T - 2, -1, -1):
        nxt = hmm.emit_KV[:, obs_BT[:, t + 1]].T * beta_TBK[t + 1]
        beta_TBK[t] = (nxt @ hmm.trans_KK.T) / c_TB[t + 1][:, None]
    return beta_TBK


def em_step(hmm: HMM, obs_BT: np.ndarray, smoothing: float = 0.0) -> tuple[HMM, float]:
    """One Baum-Welch update from B rows; returns (new model, log-likelihood of the old)."""
    alpha, c = forward_scaled(hmm, obs_BT)
    beta = backward_scaled(hmm, obs_BT, c)
    gamma_TBK = alpha * beta
    nxt = hmm.emit_KV[:, obs_BT[:, 1:].T].transpose(1, 2, 0) * beta[1:] / c[1:, :, None]
    xi_KK = np.einsum("tbi,tbj->ij", alpha[:-1], nxt) * hmm.trans_KK
    K, V = hmm.emit_KV.shape
    emit_KV = np.stack(
        [np.bincount(obs_BT.T.ravel(), gamma_TBK[..., k].ravel(), minlength=V) for k in range(K)]
    )
    start = gamma_TBK[0].sum(0) + smoothing
    xi_KK, emit_KV = xi_KK + smoothing, emit_KV + smoothing
    new = HMM(
        start / start.sum(),
        xi_KK / xi_KK.sum(1, keepdims=True),
        emit_KV / emit_KV.sum(1, keepdims=True),
    )
    return new, float(np.log(c).sum())


def baum_welch(
    hmm: HMM, obs_BT: np.ndarray, iters: int, smoothing: float = 0.0, progress: bool = False
) -> tuple[HMM, list[float]]:
    """`iters` EM steps; returns the final model and the log-likelihood before each step."""
    history = []
    for _ in tqdm(range(iters), desc="Baum-Welch", disable=not progress):
        hmm, ll = em_step(hmm, obs_BT, smoothing)
        history.append(ll)
    return hmm, history


def chunk_stream(tokens: np.ndarray, n_rows: int, max_tokens: int | None = None) -> np.ndarray:
    """[B, T] equal rows cut from the first `max_tokens` of a token stream (remainder dropped)."""
    tokens = tokens[:max_tokens] if max_tokens else tokens
    T = len(tokens) // n_rows
    if T < 2:
        raise ValueError(f"{len(tokens)} tokens cannot fill {n_rows} rows of at least 2")
    return np.asarray(tokens[: n_rows * T], np.int64).reshape(n_rows, T)


@dataclass
class HMMLanguageModel:
    """An HMM over token ids used as a language model: p(x_t | x_<t) = the forward scale."""

    hmm: HMM
    trained_tokens: int = 0  # tokens EM saw: rows x T of the stream's first max_tokens

    @classmethod
    def fit(
        cls, train: Documents, vocab_size: int, n_states: int = 32, iters: int = 10,
        rows: int = 128, max_tokens: int | None = 500_000, seed: int = 0,
        smoothing: float = 1e-3, progress: bool = True,
    ) -> tuple[HMMLanguageModel, list[float]]:  # fmt: skip
        """EM on `rows` chunks of the training stream, from emissions near the unigram."""
        obs_BT = chunk_stream(train.tokens, rows, max_tokens)
        init = random_hmm(n_states, vocab_size, seed)
        unigram = np.bincount(obs_BT.ravel(), minlength=vocab_size) + 1.0
        emit = unigram / unigram.sum() * (0.5 + init.emit_KV * vocab_size / 2)
        init = HMM(init.start_K, init.trans_KK, emit / emit.sum(1, keepdims=True))
        hmm, history = baum_welch(init, obs_BT, iters, smoothing, progress)
        return cls(hmm, obs_BT.size), history

    def logprobs(self, docs: Documents) -> np.ndarray:
        """[T] log p(token | previous tokens of its document); 0 at each document start."""
        out = np.zeros(len(docs))
        for start, end in itertools.pairwise(docs.starts):
            _, c_TB = forward_scaled(self.hmm, docs.tokens[None, start:end])
            out[start + 1 : end] = np.log(c_TB[1:, 0])
        return out
