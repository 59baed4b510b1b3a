"""AdaLoRA: the SVD-form adapter, its orthogonality regulariser and the rank budget."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_fixtures import SyntheticBatches

from llm.config import ConfigError
from llm.model import forward, init_params, logical_axes
from llm.peft.adalora import (
    LAMBDA,
    NAME,
    apply_adalora,
    entries,
    orth_penalty,
    orthogonality_regularizer,
    ranks,
    unmerge,
)
from llm.peft.rank_budget import BudgetSchedule, RankBudgetState, triplet_scores
from llm.train.build import EXTRA_KEY
from llm.train.loop import train
from llm.train.trainable import MODEL, model_params, trainable_from_config
from llm.train.trainable import merge as merge_trees

ADALORA = ["peft.method=adalora", "peft.rank=4", "peft.alpha=8.0", "peft.target_rank=2"]
WIDE = "peft.target=[blocks/attn/(q|v|o)/w, blocks/mlp/down/w]"
# P [layers, *in, r] diag(lambda [layers, r]) Q [layers, r, *out], written out per layout
EINSUM = {
    "q": "lir,lr,lrhd->lihd",
    "v": "lir,lr,lrhd->lihd",
    "o": "lhdr,lr,lre->lhde",
    "down": "lfr,lr,lre->lfe",
}


def _split(cfg, params, key=None):
    trainable = trainable_from_config(cfg)
    key = jax.random.key(1) if key is None else key
    return trainable.split(params, logical_axes(cfg.model), key=key)


def _logits(cfg, model):
    tokens = jnp.asarray(next(SyntheticBatches(2, 16))["inputs"])
    return jax.jit(lambda p: forward(cfg.model, p, tokens).logits_BLV)(model)


def _with_lambdas(params, seed=2):
    """The trained adapter with random lambdas (they start at zero)."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [
        jax.random.normal(k, x.shape, x.dtype) if path[-1].key == LAMBDA else x
        for k, (path, x) in zip(keys, leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(tree, new)


def test_zero_lambda_is_the_base_model_exactly(tiny):
    cfg = tiny(*ADALORA, WIDE)
    base = init_params(cfg.model, jax.random.key(0))
    split = _split(cfg, base)
    assert set(split.params) == {NAME} and set(split.frozen) == {MODEL, NAME}
    q = split.params[NAME]["blocks"]["attn"]["q"]["w"]
    assert q["p"].shape == (2, 32, 4) and q[LAMBDA].shape == (2, 4)
    assert q["q"].shape == (2, 4, 2, 16) and not np.any(q[LAMBDA])
    np.testing.assert_array_equal(
        _logits(cfg, model_params(split.params, split.frozen)), _logits(cfg, base)
    )


def test_merge_matches_the_formula_and_unmerge_recovers_the_base(tiny):
    cfg = tiny(*ADALORA, WIDE)
    base = init_params(cfg.model, jax.random.key(0))
    split = _split(cfg, base)
    params = _with_lambdas(split.params)
    adapter = merge_trees(params[NAME], split.frozen[NAME])
    merged = apply_adalora(base, adapter)
    for part, names in (("attn", ("q", "v", "o")), ("mlp", ("down",))):
        for name in names:
            e = adapter["blocks"][part][name]["w"]
            assert float(e["scale"]) == 2.0  # alpha / r
            want = base["blocks"][part][name]["w"] + 2.0 * np.einsum(
                EINSUM[name], e["p"], e[LAMBDA], e["q"]
            )
            np.testing.assert_allclose(
                merged["blocks"][part][name]["w"], want, rtol=1e-5, atol=1e-6
            )
    np.testing.assert_array_equal(
        merged["blocks"]["mlp"]["up"]["w"], base["blocks"]["mlp"]["up"]["w"]
    )
    unmerged = _logits(cfg, model_params(params, split.frozen))  # applied inside the loss
    np.testing.assert_allclose(_logits(cfg, merged), unmerged, rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(unmerged - _logits(cfg, base))) > 1e-2  # the adapter does something
    for got, want in zip(jax.tree.leaves(unmerge(merged, adapter)), jax.tree.leaves(base),
                         strict=True):  # fmt: skip
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_orthogonality_gradient_equals_grad_of_the_regularised_loss(tiny):
    cfg = tiny(*ADALORA, WIDE)
    base = init_params(cfg.model, jax.random.key(0))
    split = _split(cfg, base)
    # lambdas nonzero so the task loss has P / Q gradients; P, Q scaled off orthonormality
    params = jax.tree.map(lambda x: 1.5 * x, _with_lambdas(split.params))
    batch = next(SyntheticBatches(4, 16))

    def task(p):
        logits = forward(cfg.model, model_params(p, split.frozen), batch["inputs"]).logits_BLV
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()

    gamma = 0.3
    regularise = jax.jit(lambda g, p: orthogonality_regularizer(gamma).update(g, None, p)[0])
    got = regularise(jax.jit(jax.grad(task))(params), params)
    want = jax.jit(jax.grad(lambda p: task(p) + gamma * orth_penalty(p[NAME])))(params)
    reg_only = jax.jit(jax.grad(lambda p: gamma * orth_penalty(p[NAME])))(params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert sum(float(jnp.abs(r).max()) > 0.1 for r in jax.tree.leaves(reg_only)) == 8  # P, Q x 4
    # the penalty itself, per layer in numpy: sum_l ||P_l^T P_l - I||^2 + ||Q_l Q_l^T - I||^2
    want_r = 0.0
    for e in entries(params[NAME]).values():
        p = np.asarray(e["p"]).reshape(2, -1, 4)
        q = np.asarray(e["q"]).reshape(2, 4, -1)
        for layer in range(2):
            want_r += np.sum((p[layer].T @ p[layer] - np.eye(4)) ** 2)
            want_r += np.sum((q[layer] @ q[layer].T - np.eye(4)) ** 2)
    np.testing.assert_allclose(orth_penalty(params[NAME]), want_r, rtol=1e-5)


def test_budget_schedule_is_the_papers_cubic():
    """b(t) = bT + (b0 - bT)(1 - (t - ti)/(T - ti - tf))^3 (Zhang et al. eq. 12), floored.
    b0 = 48, bT = 16, ti = 10, tf = 20, T = 100, so T - ti - tf = 70 and 70^3 = 343000:
      t = 11: 16 + 32 * 69^3 / 343000 = 16 + 10512288 / 343000 = 16 + 30.65 -> 46
      t = 27: 16 + 32 * 53^3 / 343000 = 16 + 4764064 / 343000 = 16 + 13.89 -> 29
      t = 45: 16 + 32 * (35/70)^3 = 16 + 32 / 8 = 20 exactly
      t = 52: 16 + 32 * (28/70)^3 = 16 + 32 * 0.064 = 18.048 -> 18
      t = 79: 16 + 32 / 343000 -> 16; t <= 10: 48; t >= 80: 16."""
    s = BudgetSchedule(48, 16, tinit=10, tfinal=20, total=100, delta_t=5)
    golden = {1: 48, 10: 48, 11: 46, 27: 29, 45: 20, 52: 18, 79: 16, 80: 16, 100: 16}
    assert {t: s.at(t) for t in golden} == golden
    traced = jax.jit(jax.vmap(s.traced))(jnp.arange(0, 120, dtype=jnp.int32))
    np.testing.assert_array_equal(traced[0], [s.at(t) for t in range(120)])
    allocating = [t for t in range(120) if traced[1][t]]
    assert allocating == [*range(15, 80, 5), 80]  # every deltaT after tinit, then T - tf
    assert allocating == [t for t in range(120) if s.allocates(t)]


def _val():
    return SyntheticBatches(8, 16, seed=1, limit=2)


def _budget_state(opt_state) -> RankBudgetState:
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(
        x, RankBudgetState)) if isinstance(s, RankBudgetState)]  # fmt: skip
    assert len(found) == 1
    return found[0]


def test_a_short_run_prunes_to_exactly_the_budget(tiny):
    """q and v, 2 layers, r = 4: 16 triplets pruned to 2 per matrix = 8 by t = 8 - 2 = 6;
    steps 7 and 8 run at the fixed rank pattern."""
    cfg = tiny("train.steps=8", *ADALORA, "peft.tinit=1", "peft.tfinal=2", "peft.orth_reg=0.1")
    kw = dict(train_batches=SyntheticBatches(8, 16), val_batches=_val)
    key = jax.random.key(cfg.train.seed)  # how llm/train/build.py initialises the run
    first = _split(cfg, init_params(cfg.model, key), jax.random.fold_in(key, EXTRA_KEY))
    result = train(cfg, trainable=trainable_from_config(cfg), **kw)
    state = result["state"]
    budget = _budget_state(state.opt_state)
    assert int(budget.count) == 8
    lambdas = {p: np.asarray(e[LAMBDA]) for p, e in entries(state.params[NAME]).items()}
    keep = {p: np.asarray(e[LAMBDA]) for p, e in entries(budget.keep[NAME]).items()}
    assert sum(int(np.count_nonzero(v)) for v in lambdas.values()) == 8
    for path, lam in lambdas.items():
        np.testing.assert_array_equal(lam != 0, keep[path])  # kept ones moved, others are 0
        assert np.all(lam[~keep[path]] == 0.0)
    scores = {
        p: np.asarray(s) for p, s in triplet_scores(budget.ipt[NAME], budget.unc[NAME]).items()
    }
    kept = np.concatenate([scores[p][keep[p]] for p in scores])
    pruned = np.concatenate([scores[p][~keep[p]] for p in scores])
    assert kept.size == 8 and kept.min() > pruned.max()  # the 8 most important triplets
    assert sum(ranks(state.params[NAME])[p][layer] for p in lambdas for layer in (0, 1)) == 8
    for got, want in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(first.frozen),
                         strict=True):  # fmt: skip
        np.testing.assert_array_equal(got, want)  # decoder and scales bitwise unchanged
    assert set(state.params) == {NAME}
    for path, e in entries(state.params[NAME]).items():  # P and Q of every target moved
        old = entries(first.params[NAME])[path]
        assert not np.array_equal(e["p"], old["p"]) and not np.array_equal(e["q"], old["q"])


def test_bad_values_are_errors(tiny):
    with pytest.raises(ConfigError, match=r"peft\.target_rank: 5 exceeds rank=4"):
        tiny(*ADALORA, "peft.target_rank=5")
    with pytest.raises(ConfigError, match=r"peft\.target_rank: must be positive"):
        tiny(*ADALORA, "peft.target_rank=0")
    with pytest.raises(ConfigError, match=r"peft\.deltaT: must be >= 1"):
        tiny(*ADALORA, "peft.deltaT=0")
    with pytest.raises(ConfigError, match=r"peft\.beta2: must be in \(0, 1\), got 1\.0"):
        tiny(*ADALORA, "peft.beta2=1.0")
    with pytest.raises(ConfigError, match=r"peft\.tinit: must be >= 0"):
        tiny(*ADALORA, "peft.tinit=-1")
    with pytest.raises(ConfigError, match=r"peft\.orth_reg: must be >= 0"):
        tiny(*ADALORA, "peft.orth_reg=-0.5")
    cfg = tiny("train.steps=10", *ADALORA, "peft.tinit=4", "peft.tfinal=6")
    with pytest.raises(ValueError, match=r"peft\.tinit \+ peft\.tfinal = 4 \+ 6 must be below "
                       r"train\.steps = 10"):  # fmt: skip
        train(cfg, train_batches=SyntheticBatches(8, 16), val_batches=_val)


class _StopAfter(SyntheticBatches):
    """Batches that send this process SIGTERM while the batch of step `n` is drawn: the
    loop finishes that step, saves it and stops (llm/train/preemption.py), as a preempted
    job does, without changing train.steps (which AdaLoRA's schedule depends on)."""

    def __init__(self, n: int):
        super().__init__(8, 16)
        self.n = n

    def __next__(self):
        if self.index == self.n - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__next__()


@pytest.mark.slow  # three short runs
def test_a_preempted_adalora_run_resumes_to_the_uninterrupted_one(tiny, tmp_path):
    """The budget's EMAs, mask and count live in the optimiser state: a run stopped at step
    2 (mid-schedule; t = 3 is the final allocation) and resumed ends bitwise equal."""

    def run(run_dir, batches):
        cfg = tiny("train.steps=4", f"train.run_dir={run_dir}", *ADALORA, "peft.tfinal=1")
        return train(cfg, trainable=trainable_from_config(cfg), train_batches=batches,
                     val_batches=_val)  # fmt: skip

    straight = run(tmp_path / "straight", SyntheticBatches(8, 16))["state"]
    assert run(tmp_path / "split", _StopAfter(2))["stopped"] == "SIGTERM"
    resumed = run(tmp_path / "split", SyntheticBatches(8, 16))
    assert resumed["resumed_from"] == 2
    for tree in ("params", "opt_state"):
        got, want = getattr(resumed["state"], tree), getattr(straight, tree)
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, b)
