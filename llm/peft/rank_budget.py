"""AdaLoRA's rank allocation (Zhang et al. 2023, arXiv:2303.10512, sec. 3.2-3.3) as optax.

    tx = adalora_optimizer(cfg.peft, cfg.train.steps, inner)   # inner: clipping + AdamW ...

The train step stays generic: everything AdaLoRA does at training time is a gradient
transformation over the trained tree. `adalora_optimizer` chains two:

1. `orthogonality_regularizer` (llm/peft/adalora.py): gamma * dR/dP, gamma * dR/dQ added to the
   gradients, the same as adding gamma * R to the loss.
2. `rank_budget(inner)`: runs the inner optimiser, then masks. With t = updates taken + 1 (the
   paper's 1-based step, Algorithm 1), each update
   * scores every entry w of P, lambda and Q by its sensitivity I = |w * dL/dw| (eq. 8),
     smoothed I_bar = beta1 I_bar + (1 - beta1) I (eq. 10) with the uncertainty
     U_bar = beta2 U_bar + (1 - beta2) |I - I_bar| (eq. 11);
   * scores triplet i of a matrix S_i = s(lambda_i) + mean_j s(P_ji) + mean_j s(Q_ij) with
     s = I_bar * U_bar (eq. 7 and 9; PEFT's RankAllocator computes the same);
   * at an allocation step keeps the b(t) highest-scoring triplets over *all* adapted matrices
     (one global budget, so important matrices get more rank) and sets the other lambdas to
     exactly zero by emitting -lambda as their update. b(t) is eq. 12's cubic schedule:
     b(0) (every triplet) until tinit, then down to the target b(T) = target_rank * matrices
     at t = T - tfinal; allocations happen every deltaT steps in between.
   At t = T - tfinal the last allocation fixes the rank pattern: from then on the same
   triplets are zeroed every step (they stay exactly zero) and the EMAs stop (as PEFT, which
   masks with the saved rank pattern), so the state records the scores that chose the
   final pattern. Between allocations a pruned lambda is trained again and can come back.

It must be the last transformation: any later one (a learning-rate scale) would turn the
-lambda update into something else. Sensitivities use the params before the update, where
the gradient was taken (PEFT uses the updated params with the previous gradient).
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llm.config.peft import PeftConfig
from llm.peft.adalora import LAMBDA, NAME, entries, flat_pq, orthogonality_regularizer
from llm.peft.lora import _nest
from llm.typing import PyTree


@dataclasses.dataclass(frozen=True)
class BudgetSchedule:
    """b(t), the total count of kept triplets after update t (1-based), paper eq. 12."""

    initial: int  # b(0): every triplet, rank * adapted matrices
    target: int  # b(T): target_rank * adapted matrices
    tinit: int  # steps at b(0) before pruning starts
    tfinal: int  # last steps at b(T), the rank pattern fixed
    total: int  # T, the run's steps
    delta_t: int = 1  # steps between allocations

    def __post_init__(self) -> None:
        if self.tinit + self.tfinal >= self.total:
            raise ValueError(
                f"peft.tinit + peft.tfinal = {self.tinit} + {self.tfinal} must be below "
                f"train.steps = {self.total}: AdaLoRA's budget falls between them"
            )
        if not 0 < self.target <= self.initial:
            raise ValueError(
                f"AdaLoRA's target budget {self.target} (peft.target_rank x matrices) must be "
                f"in (0, {self.initial}], the initial count of triplets"
            )

    @property
    def final_step(self) -> int:
        """T - tfinal: the last allocation, which fixes the rank pattern."""
        return self.total - self.tfinal

    def at(self, t: int) -> int:
        """bT + floor((b0 - bT) (1 - (t - ti) / (T - ti - tf))^3) on [ti, T - tf), exactly."""
        if t <= self.tinit:
            return self.initial
        if t >= self.final_step:
            return self.target
        span, left = self.final_step - self.tinit, self.final_step - t
        return self.target + (self.initial - self.target) * left**3 // span**3

    def allocates(self, t: int) -> bool:
        """Whether update t reallocates the budget (every deltaT steps after tinit, and T - tf)."""
        in_phase = self.tinit < t < self.final_step and (t - self.tinit) % self.delta_t == 0
        return in_phase or t == self.final_step

    def drops(self) -> np.ndarray:
        """For j = 1 .. b0 - bT, the first t at which b(t) <= b0 - j: b(t) is b0 less how many
        of these have passed. Exact integer arithmetic on the host (a float32 cube inside the
        step could floor 29.999... to 29), a table of b0 - bT entries rather than T."""
        steps = range(self.tinit, self.final_step + 1)  # b is non-increasing here
        return np.asarray(
            [bisect.bisect_left(steps, True, key=lambda t, b=b: self.at(t) <= b) + self.tinit
             for b in range(self.initial - 1, self.target - 1, -1)],
            np.int32,
        )  # fmt: skip

    def traced(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(b(t), allocates(t)) for a traced int32 step."""
        budget = self.initial - jnp.sum(t >= jnp.asarray(self.drops())).astype(jnp.int32)
        phase = (t > self.tinit) & (t < self.final_step) & ((t - self.tinit) % self.delta_t == 0)
        return budget, phase | (t == self.final_step)


class RankBudgetState(NamedTuple):
    """count: updates taken.  ipt / unc: {adalora: EMAs of the sensitivity and its
    uncertainty per P, lambda, Q entry}, float32.  keep: {adalora: bool [layers, r] per
    target}: the triplets inside the last allocated budget.  inner: the optimiser's state."""

    count: jax.Array
    ipt: PyTree
    unc: PyTree
    keep: PyTree
    inner: optax.OptState


def schedule_for(cfg: PeftConfig, total_steps: int, adapter: PyTree) -> BudgetSchedule:
    """The budget for this adapter: rank and matrix count come from its lambdas' shapes."""
    lambdas = [e[LAMBDA] for e in entries(adapter).values()]
    matrices = sum(lam.shape[0] for lam in lambdas)
    initial = sum(lam.size for lam in lambdas)
    return BudgetSchedule(initial, cfg.target_rank * matrices, cfg.tinit, cfg.tfinal,
                          total_steps, cfg.deltaT)  # fmt: skip


def triplet_scores(ipt: PyTree, unc: PyTree) -> dict[str, jax.Array]:
    """{target path: S [layers, r]}, S_i = s(lambda_i) + mean s(P[:, i]) + mean s(Q[i, :])."""
    scores, uncertainties = {}, entries(unc)
    for path, i_bar in entries(ipt).items():
        u_bar = uncertainties[path]
        s = {k: i_bar[k] * u_bar[k] for k in i_bar}
        s_p, s_q = flat_pq(s)
        scores[path] = s[LAMBDA] + jnp.mean(s_p, axis=1) + jnp.mean(s_q, axis=2)
    return scores


def top_budget(scores: dict[str, jax.Array], budget: jax.Array) -> dict[str, jax.Array]:
    """{path: bool [layers, r]}, True on exactly `budget` highest-scoring triplets overall
    (ties broken by position, so the count is exact where a threshold would not be)."""
    paths = sorted(scores)
    flat = jnp.concatenate([scores[p].reshape(-1) for p in paths])
    order = jnp.argsort(-flat, stable=True)
    keep = jnp.zeros(flat.shape, bool).at[order].set(jnp.arange(flat.size) < budget)
    out, start = {}, 0
    for p in paths:
        out[p] = keep[start : start + scores[p].size].reshape(scores[p].shape)
        start += scores[p].size
    return out


def _smooth(state: RankBudgetState, params: PyTree, grads: PyTree, cfg: PeftConfig, on):
    """(I_bar, U_bar) after this step's sensitivities (eq. 8, 10, 11), unchanged unless `on`."""

    def ema(i_bar, u_bar, w, g):
        sens = jnp.abs(w.astype(jnp.float32) * g.astype(jnp.float32))
        new_i = cfg.beta1 * i_bar + (1 - cfg.beta1) * sens
        new_u = cfg.beta2 * u_bar + (1 - cfg.beta2) * jnp.abs(sens - new_i)
        return jnp.where(on, new_i, i_bar), jnp.where(on, new_u, u_bar)

    pairs = jax.tree.map(ema, state.ipt[NAME], state.unc[NAME], params[NAME], grads[NAME])
    is_pair = lambda x: isinstance(x, tuple)  # noqa: E731
    return (jax.tree.map(lambda x: x[0], pairs, is_leaf=is_pair),
            jax.tree.map(lambda x: x[1], pairs, is_leaf=is_pair))  # fmt: skip


def _mask(updates: PyTree, params: PyTree, keep: dict, on: jax.Array) -> PyTree:
    """Updates whose lambda entries outside `keep` are -lambda when `on` (lambda + u = 0)."""
    lambdas = {path: e[LAMBDA] for path, e in entries(params).items()}

    def masked(path: str, u: jax.Array) -> jax.Array:
        return jnp.where(on & ~keep[path], -lambdas[path].astype(u.dtype), u)

    return _nest({p: {**e, LAMBDA: masked(p, e[LAMBDA])} for p, e in entries(updates).items()})


def rank_budget(
    cfg: PeftConfig, total_steps: int, inner: optax.GradientTransformation
) -> optax.GradientTransformation:
    """`inner`, then AdaLoRA's budget masking of the `adalora` component's lambdas (above)."""

    def init_fn(params: PyTree) -> RankBudgetState:
        if NAME not in params:
            raise ValueError(f"peft.method=adalora, but the trained tree has no {NAME!r} adapter")
        schedule_for(cfg, total_steps, params[NAME])  # raises on a bad tinit / tfinal now
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params[NAME])
        keep = {p: {LAMBDA: jnp.ones(e[LAMBDA].shape, bool)} for p, e in entries(zeros).items()}
        return RankBudgetState(jnp.zeros((), jnp.int32), {NAME: zeros}, {NAME: zeros},
                               {NAME: _nest(keep)}, inner.init(params))  # fmt: skip

    def update_fn(updates: PyTree, state: RankBudgetState, params: PyTree = None):
        if params is None:
            raise ValueError("AdaLoRA's rank budget needs the params")
        schedule = schedule_for(cfg, total_steps, params[NAME])
        t = state.count + 1
        inner_updates, inner_state = inner.update(updates, state.inner, params)
        ipt, unc = _smooth(state, params, updates, cfg, t <= schedule.final_step)
        budget, allocate = schedule.traced(t)
        chosen = top_budget(triplet_scores(ipt, unc), budget)
        old = {p: e[LAMBDA] for p, e in entries(state.keep[NAME]).items()}
        keep = {p: jnp.where(allocate, chosen[p], old[p]) for p in old}
        on = allocate | (t > schedule.final_step)
        masked = _mask(inner_updates[NAME], params[NAME], keep, on)
        new_keep = {NAME: _nest({p: {LAMBDA: k} for p, k in keep.items()})}
        new_state = RankBudgetState(t, {NAME: ipt}, {NAME: unc}, new_keep, inner_state)
        return {**inner_updates, NAME: masked}, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def adalora_optimizer(
    cfg: PeftConfig, total_steps: int, inner: optax.GradientTransformation
) -> optax.GradientTransformation:
    """The orthogonality regulariser's gradient, then `inner` under the rank budget."""
    return optax.chain(
        orthogonality_regularizer(cfg.orth_reg), rank_budget(cfg, total_steps, inner)
    )
