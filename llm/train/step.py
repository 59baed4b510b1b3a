"""The pure train step: (state, batch) -> (state, metrics), jitted once, buffers donated.

    step = make_train_step(cfg, loss_fn, tx, schedule)    # jax.jit'ed, donates `state`
    state, metrics = step(state, batch)

What it does, in order:
  1. Splits the batch (every leaf has a leading B axis) into `grad_accum` micro-batches of
     B/A rows and runs a `lax.scan` over them, adding loss *sums*, weights and gradients of
     the sums; dividing once at the end makes the result equal to the big batch (see
     losses/base.py). With `train.tbptt` the loss is a `CarryLossFn`: each micro-batch's rows
     start from their rows of `state.carry` and the new state is the step's `carry`.
  2. float16 compute: the loss is multiplied by a dynamic loss scale before differentiation
     and gradients divided by it; non-finite gradients skip the update and halve the scale,
     `loss_scale_period` finite steps double it (Micikevicius et al. 2018). bfloat16 compute
     with float32 master weights needs no scaling: the model casts float32 params to its
     compute dtype, so gradients arrive in float32 (`model.dtype` vs `model.param_dtype`).
  3. Applies the optimiser unless the step is bad: non-finite loss/gradients (the loop then
     aborts, see loop.py) or, with `spike_skip`, a loss or gradient norm above
     mean + k*std of the last `spike_window` accepted steps. A skipped step leaves params and
     optimiser state untouched and counts in `state.skipped`. An update that makes a
     parameter non-finite (optim.lr far too high) also clears `metrics["finite"]`, read off
     the new params' norm, so the loop aborts before that state can reach a checkpoint.
  4. With `train.layer_stats`, the metrics also hold each block layer's gradient norm
     (`layer{i:02d}/grad_norm`, llm/train/layer_stats.py), reduced from the same gradients;
     without it the step's program is exactly what it was.

Shardings: pass `state_shardings` / `batch_sharding` (NamedShardings; the batch's is a dict
with one per leaf, from the loss's `batch_axes`) to place the step on a mesh; with None, jit
infers placement (single device).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from llm.train.layer_stats import check_layer_stats, grad_norm_metrics, layer_grad_norms
from llm.train.losses.base import Batch, LossFn, LossOutput
from llm.train.optim import leaf_sumsq
from llm.train.state import TrainState, dropout_key
from llm.typing import Array, PyTree

Metrics = dict[str, Any]
Carry = dict[str, Array]  # truncated BPTT's state per batch row (TrainState.carry)
# a loss that carries state: (params, frozen, batch, key, carry) -> (sums, next carry)
CarryLossFn = Callable[[PyTree, PyTree, Batch, Any, Carry], tuple[LossOutput, Carry]]


def accumulate_gradients(
    loss_fn: LossFn | CarryLossFn,
    params: PyTree,
    batch: Batch,
    state: TrainState,
    n_micro: int,
    scale: Array,
    carrying: bool = False,
) -> tuple[LossOutput, PyTree, Carry]:
    """Sums of loss, weight, metrics and d(scale * total)/d(params) over `n_micro` chunks,
    and the carried state after them (`state.carry` unchanged unless `carrying`).

    Only `params` is differentiated: `state.frozen` enters the loss as a constant, so no
    gradient is computed (or stored) for any frozen leaf; so does `state.carry`, which is what
    truncates backpropagation through time at the batch boundary. Micro-batch i takes rows
    [i B/A, (i+1) B/A) of the batch and the same rows of the carry, so each row keeps its state.
    """
    frozen = state.frozen

    def scaled(p: PyTree, micro: Batch, key: Array, carry: Carry):
        if carrying:
            out, carry = loss_fn(p, frozen, micro, key, carry)
        else:
            out = loss_fn(p, frozen, micro, key)
        return out.total * scale, (out, carry)

    grad_fn = jax.grad(scaled, has_aux=True)
    if n_micro == 1:
        grads, (out, carry) = grad_fn(params, batch, dropout_key(state, 0), state.carry)
        return out, grads, carry

    micro_batches = jax.tree.map(
        lambda x: x.reshape(n_micro, x.shape[0] // n_micro, *x.shape[1:]), batch
    )
    micro_carries = split_rows(state.carry, n_micro)

    def body(acc: tuple[LossOutput, PyTree], xs: tuple[Batch, Carry, Array]):
        micro, carry, i = xs
        grads, (out, carry) = grad_fn(params, micro, dropout_key(state, i), carry)
        return jax.tree.map(jnp.add, acc, (out, grads)), carry

    batch0, carry0 = jax.tree.map(lambda x: x[0], (micro_batches, micro_carries))
    zero_out = jax.eval_shape(lambda: grad_fn(params, batch0, dropout_key(state, 0), carry0)[1][0])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), (zero_out, params))
    xs = (micro_batches, micro_carries, jnp.arange(n_micro))
    (out, grads), carries = jax.lax.scan(body, zeros, xs)
    return out, grads, merge_rows(carries)


def row_axis(name: str) -> int:
    """The batch-row axis of a carry leaf, from its name's axis letters (h_YBH -> 1)."""
    letters = name.rsplit("_", 1)[-1]
    if "_" not in name or "B" not in letters:
        raise ValueError(f"carry leaf {name!r} does not name its row axis B (e.g. 'h_YBH')")
    return letters.index("B")


def split_rows(carry: Carry, n: int) -> Carry:
    """Each leaf's B rows as [n, ...B/n rows...]: micro-batch i gets rows [i B/n, (i+1) B/n)."""

    def split(name: str, x: Array) -> Array:
        a = row_axis(name)
        x = x.reshape(*x.shape[:a], n, x.shape[a] // n, *x.shape[a + 1 :])
        return jnp.moveaxis(x, a, 0)

    return {k: split(k, v) for k, v in carry.items()}


def merge_rows(carries: Carry) -> Carry:
    """The inverse of `split_rows`: [n, ...B/n rows...] back to B rows in order."""

    def merge(name: str, x: Array) -> Array:
        a = row_axis(name)
        x = jnp.moveaxis(x, 0, a)
        return x.reshape(*x.shape[:a], x.shape[a] * x.shape[a + 1], *x.shape[a + 2 :])

    return {k: merge(k, v) for k, v in carries.items()}


def _finite_or_zero(carry: Carry) -> Carry:
    """The carried state, or zeros if any of it is NaN/Inf: a diverged forward never leaks
    into the next batch (and a checkpoint refuses non-finite states)."""
    leaves = [
        jnp.all(jnp.isfinite(v)) for v in carry.values() if jnp.issubdtype(v.dtype, jnp.inexact)
    ]
    if not leaves:
        return carry
    ok = jnp.all(jnp.stack(leaves))
    return {k: jnp.where(ok, v, jnp.zeros_like(v)) for k, v in carry.items()}


def _is_spike(state: TrainState, loss: Array, gnorm: Array, k: float) -> Array:
    """True when loss or grad norm exceeds mean + k*std of a full window of accepted steps."""
    hist_W2 = state.spike_hist_W2
    full = state.spike_seen >= hist_W2.shape[0]
    limit_2 = jnp.mean(hist_W2, axis=0) + k * jnp.std(hist_W2, axis=0)
    return full & jnp.any(jnp.stack([loss, gnorm]) > limit_2)


def _update_unless_bad(
    tx: optax.GradientTransformation,
    ok: Array,
    grads: PyTree,
    inv: Array,
    params: PyTree,
    opt_state: Any,
) -> tuple[PyTree, Any]:
    """(params, opt_state) after the update with gradients `grads * inv` if `ok`, else
    unchanged. The scaling happens inside the branch so that it fuses into the update.

    A `lax.cond`, not a select of new against old: selecting keeps the old moments alive
    while the new ones are written over them, so XLA copies every moment first; on CPU that
    more than doubled the update's time (docs/LOG.md). The cond's false branch returns its
    operands, which with the donated state costs nothing.

    Both branches must return the state's own dtypes: with bfloat16 or float16 params the
    float32 gradients promote the optimiser's moments (and some updates) to float32, so the
    update casts them back. The state keeps the dtypes it was created with, step after step
    (a float32 run is unaffected: a cast to the same dtype is no operation).
    """

    def update(operands: tuple[PyTree, Array, PyTree, Any]) -> tuple[PyTree, Any]:
        g, scale, p, o = operands
        updates, new_o = tx.update(jax.tree.map(lambda x: x * scale, g), o, p)
        return _same_dtypes(optax.apply_updates(p, updates), p), _same_dtypes(new_o, o)

    def keep(operands: tuple[PyTree, Array, PyTree, Any]) -> tuple[PyTree, Any]:
        return operands[2], operands[3]

    return jax.lax.cond(ok, update, keep, (grads, inv, params, opt_state))


def _same_dtypes(new: PyTree, like: PyTree) -> PyTree:
    return jax.tree.map(lambda n, o: n.astype(o.dtype), new, like)


def _next_loss_scale(cfg: Any, state: TrainState, grads_ok: Array) -> tuple[Array, Array]:
    good = jnp.where(grads_ok, state.good_steps + 1, 0)
    grow = good >= cfg.train.loss_scale_period
    scale = jnp.where(
        grads_ok, jnp.where(grow, state.loss_scale * 2, state.loss_scale), state.loss_scale / 2
    )
    return scale, jnp.where(grow, 0, good)


def train_step(
    cfg: Any,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    state: TrainState,
    batch: Batch,
) -> tuple[TrainState, Metrics]:
    """One optimiser step (unjitted; `make_train_step` jits it)."""
    fp16 = cfg.model.dtype == "float16"
    scale = state.loss_scale if fp16 else jnp.ones((), jnp.float32)
    carrying = cfg.train.tbptt
    if carrying != bool(state.carry):
        raise ValueError(
            f"train.tbptt={carrying} but the train state {'lacks' if carrying else 'holds'} a "
            "carried recurrent state; build the state with llm.train.build for this config"
        )
    out, grads, carry = accumulate_gradients(
        loss_fn, state.params, batch, state, cfg.train.grad_accum, scale, carrying
    )
    weight = jnp.maximum(out.weight, 1.0)
    # the mean's gradients are grads * inv: a multiply by one scalar (not a divide), which
    # XLA folds into each consumer (the norms' reductions, the optimiser's update fusions)
    # instead of writing out divided gradients first
    inv = 1.0 / (scale * weight)
    grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
    loss = out.total / weight
    # one reduction pass gives both the norm and which leaves hold a NaN/Inf: a leaf's sum of
    # squares is finite iff all its entries are (or, harmlessly, they square past 3e38)
    sumsq = leaf_sumsq(jax.tree.map(lambda g: g * inv, grads))
    gnorm = jnp.sqrt(sum(jax.tree.leaves(sumsq)))
    grads_ok = jnp.isfinite(gnorm)
    finite = jnp.isfinite(loss) & (grads_ok | fp16)
    spike = _is_spike(state, loss, gnorm, cfg.train.spike_k) if cfg.train.spike_skip else False
    ok = jnp.isfinite(loss) & grads_ok & ~spike

    new_params, new_opt = _update_unless_bad(tx, ok, grads, inv, state.params, state.opt_state)
    hist = jnp.concatenate([state.spike_hist_W2[1:], jnp.stack([loss, gnorm])[None]])
    loss_scale, good = _next_loss_scale(cfg, state, grads_ok) if fp16 else (scale, state.good_steps)
    new_state = TrainState(
        step=state.step + 1,
        params=new_params,
        frozen=state.frozen,
        opt_state=new_opt,
        rng=state.rng,
        loss_scale=loss_scale,
        good_steps=good,
        spike_hist_W2=jnp.where(ok, hist, state.spike_hist_W2),
        spike_seen=state.spike_seen + ok.astype(jnp.int32),
        skipped=state.skipped + (finite & ~ok).astype(jnp.int32),
        carry=_finite_or_zero(carry),
    )
    # in float32: a float16 tree's sum of squares overflows long before its entries do
    param_norm = optax.tree.norm(jax.tree.map(lambda p: p.astype(jnp.float32), new_state.params))
    metrics = {
        "loss": loss,
        "grad_norm": gnorm,
        "param_norm": param_norm,
        "lr": schedule(state.step),
        "tokens": out.weight,
        "finite": finite & jnp.isfinite(param_norm),  # no checkpoint is written unless true
        "skipped": new_state.skipped,
        "loss_scale": scale,
        "grad_finite": jax.tree.map(jnp.isfinite, sumsq),
        **{k: v / weight for k, v in out.metrics.items()},
    }
    if cfg.train.layer_stats:  # a per-layer reduction of the gradients above, nothing more
        metrics.update(grad_norm_metrics(layer_grad_norms(jax.tree.map(lambda g: g * inv, grads))))
    return new_state, metrics


def make_train_step(
    cfg: Any,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    state_shardings: Any = None,
    batch_sharding: Any = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """`train_step` closed over its configuration, jitted with the state donated; with
    `train.tbptt`, `loss_fn` is a `CarryLossFn` (e.g. `StreamCausalLMLoss.carried`)."""
    check_layer_stats(cfg)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        return train_step(cfg, loss_fn, tx, schedule, state, batch)

    if state_shardings is None and batch_sharding is None:
        return jax.jit(step, donate_argnums=0)
    return jax.jit(
        step,
        donate_argnums=0,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
    )
