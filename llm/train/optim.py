"""Optimisers and learning-rate schedules from `OptimConfig`, all built from optax parts.

    tx = make_optimizer(cfg.optim, total_steps=cfg.train.steps, params=params, axes=axes)

Choices and where they come from:
  * AdamW with decoupled weight decay (Loshchilov & Hutter 2019), masked off norms, biases
    and anything with fewer than `decay_min_ndim` dims: decaying gains and offsets pulls
    them to zero for no regularisation benefit (as in GPT-2/nanoGPT practice).
  * Adafactor (Shazeer & Stern 2018): factored second moments, memory ~ rows + cols.
  * Lion (Chen et al. 2023): sign of an interpolated momentum; use ~3-10x smaller lr.
  * SGD with (optionally Nesterov) momentum `b1`.
  * Muon (Jordan et al. 2024; `optax.contrib.muon`): Newton-Schulz orthogonalised momentum for
    the hidden weight matrices; embeddings, the output layer, norms and biases use AdamW
    (without decay: optax gives that branch no mask).
  * Schedules: linear warmup then cosine / linear decay to `min_lr_ratio * lr`, constant,
    or warmup-stable-decay (WSD; Hu et al. 2024, MiniCPM) with a final linear decay over
    `decay_fraction` of the run.
  * Global-norm gradient clipping (Pascanu et al. 2013) before the update rule.

A stacked (scanned) layer axis is not counted as a dimension when deciding "is this a
matrix": a stack of norm scales `[Y, D]` is still a vector per layer. The axis is recognised
by its logical name (`LAYER_AXIS`) when logical axes are given, else leaves are taken as-is.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from llm.config import OptimConfig
from llm.config.peft import PeftConfig
from llm.peft.rank_budget import adalora_optimizer
from llm.typing import PyTree

LAYER_AXIS = "layers"  # logical name of the scan-stacked layer axis (llm.model.logical_axes)


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Learning rate as a function of the step: warmup, then the configured shape."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    warmup = min(cfg.warmup_steps, total_steps)
    rest = max(total_steps - warmup, 1)
    if cfg.schedule == "constant":
        after = optax.constant_schedule(peak)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, rest, alpha=cfg.min_lr_ratio)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(peak, floor, rest)
    else:  # wsd: hold the peak, then decay linearly over the last decay_fraction of the run
        decay = max(round(cfg.decay_fraction * total_steps), 1)
        stable = max(rest - decay, 0)
        after = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, floor, decay)],
            [stable],
        )
    if warmup == 0:
        return after
    ramp = optax.linear_schedule(peak / warmup, peak, warmup - 1) if warmup > 1 else None
    ramp = ramp or optax.constant_schedule(peak)
    return optax.join_schedules([ramp, after], [warmup])


def param_paths(params: PyTree) -> PyTree:
    """A tree like `params` whose leaves are their '/'-joined key paths ("blocks/attn/q/w")."""

    def name(path: tuple[Any, ...], _: Any) -> str:
        parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        return "/".join(parts)

    return jax.tree_util.tree_map_with_path(name, params)


def _matrix_ndim(leaf: Any, axes: tuple[str, ...] | None) -> int:
    if axes is None:
        return len(leaf.shape)
    return sum(1 for a in axes if a != LAYER_AXIS)


def _axes_or_none(params: PyTree, axes: PyTree | None) -> PyTree:
    """Per-leaf tuples of logical axis names (PartitionSpecs accepted), or None everywhere."""
    if axes is None:
        return jax.tree.map(lambda _: None, params)
    is_spec = lambda x: isinstance(x, tuple | PartitionSpec)  # noqa: E731
    flat = [tuple(a) for a in jax.tree.leaves(axes, is_leaf=is_spec)]
    return jax.tree.unflatten(jax.tree.structure(params), flat)


def decay_mask(cfg: OptimConfig, params: PyTree, axes: PyTree | None = None) -> PyTree:
    """True where weight decay applies: enough dims and no `no_decay_patterns` match the path."""
    patterns = [re.compile(p) for p in cfg.no_decay_patterns]

    def decays(path: str, leaf: Any, ax: tuple[str, ...] | None) -> bool:
        if _matrix_ndim(leaf, ax) < cfg.decay_min_ndim:
            return False
        return not any(p.search(path) for p in patterns)

    return jax.tree.map(decays, param_paths(params), params, _axes_or_none(params, axes))


def muon_dimensions(params: PyTree, axes: PyTree | None) -> PyTree:
    """Muon's per-leaf dimension numbers: hidden matrices get Muon, everything else AdamW.

    A hidden matrix maps the residual "embed" axis to other non-layer axes (or back); the
    token embedding, position table and output layer (a "vocab" or "position" axis) stay on
    AdamW as Muon's authors recommend. Head axes are kept separate in our params ([D, N, H]),
    so the orthogonalised matrix is embed x (heads*head_dim). Unnamed axes ahead of "embed"
    are input features with it (the n-gram MLP's [context, embed, mlp] window weight is a
    (C D) x F matrix). With no logical axes, plain
    2-D leaves whose name does not mention "embed" qualify.
    """
    from optax.contrib import MuonDimensionNumbers

    def dims(path: str, leaf: Any, ax: tuple[str, ...] | None):
        if ax is None:
            plain = leaf.ndim == 2 and "embed" not in path
            return MuonDimensionNumbers(0, 1) if plain else None
        inner = [i for i, a in enumerate(ax) if a != LAYER_AXIS]
        names = [ax[i] for i in inner]
        if len(inner) < 2 or "embed" not in names or {"vocab", "position"} & set(names):
            return None
        embed = inner[names.index("embed")]
        others = tuple(i for i in inner if i != embed)
        if embed == inner[0]:
            return MuonDimensionNumbers(reduction_axis=embed, output_axis=others)
        before = tuple(i for i in inner if i < embed)
        if all(ax[i] is None for i in before):  # unnamed input axes with embed: [C, D, F]
            after = tuple(i for i in inner if i > embed)
            return MuonDimensionNumbers(reduction_axis=(*before, embed), output_axis=after)
        return MuonDimensionNumbers(reduction_axis=others, output_axis=embed)

    return jax.tree.map(dims, param_paths(params), params, _axes_or_none(params, axes))


def make_optimizer(
    cfg: OptimConfig,
    total_steps: int,
    params: PyTree,
    axes: PyTree | None = None,
    peft: PeftConfig | None = None,
) -> optax.GradientTransformation:
    """Clipping + the configured update rule + the schedule, as one optax transformation;
    with `peft.method: adalora`, wrapped in AdaLoRA's regulariser and rank budget (outermost,
    so that its masking is the last word on the update; llm/peft/rank_budget.py)."""
    tx = _make_rule(cfg, total_steps, params, axes)
    if peft is not None and peft.method == "adalora":
        return adalora_optimizer(peft, total_steps, tx)
    return tx


def _make_rule(
    cfg: OptimConfig, total_steps: int, params: PyTree, axes: PyTree | None
) -> optax.GradientTransformation:
    """Clipping + the configured update rule + the schedule."""
    lr = make_schedule(cfg, total_steps)
    mask = decay_mask(cfg, params, axes)
    wd = cfg.weight_decay
    if cfg.name == "adamw":
        rule = optax.adamw(lr, cfg.b1, cfg.b2, cfg.eps, weight_decay=wd, mask=mask)
    elif cfg.name == "adafactor":
        rule = optax.adafactor(lr, weight_decay_rate=wd or None, weight_decay_mask=mask)
    elif cfg.name == "lion":
        rule = optax.lion(lr, cfg.b1, cfg.b2, weight_decay=wd, mask=mask)
    elif cfg.name == "sgd":
        rule = optax.chain(
            optax.add_decayed_weights(wd, mask=mask),
            optax.sgd(lr, momentum=cfg.b1 or None, nesterov=cfg.nesterov),
        )
    else:
        adam_lr = (
            lr
            if cfg.muon_adam_lr is None
            else make_schedule(OptimConfig(**{**_fields(cfg), "lr": cfg.muon_adam_lr}), total_steps)
        )
        rule = _muon(cfg, lr, adam_lr, params, axes)
    if cfg.grad_clip is None:
        return rule
    return optax.chain(clip_by_global_norm(cfg.grad_clip), rule)


def leaf_sumsq(tree: PyTree) -> PyTree:
    """Per-leaf sums of squares in float32: the global norm's parts (the train step reads
    which leaves hold a NaN/Inf off them too)."""
    return jax.tree.map(lambda g: jnp.sum(jnp.square(g.astype(jnp.float32))), tree)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """`optax.clip_by_global_norm`'s rule, as one scalar multiply per element.

    optax divides every element by the norm inside a select; XLA treats the divide as too
    expensive to duplicate into the optimiser's three update fusions (moments, params) and
    writes the clipped gradients out first: one more pass over all gradients (about a third
    of the update's time on CPU, docs/LOG.md). A scalar factor, min(1, max_norm / norm),
    folds into those fusions instead. Same state (none) as optax's.
    """

    def update_fn(updates: PyTree, state: optax.EmptyState, params: PyTree = None):
        del params
        norm = jnp.sqrt(sum(jax.tree.leaves(leaf_sumsq(updates))))
        factor = jnp.minimum(1.0, max_norm / norm)
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _muon(cfg: OptimConfig, lr: Any, adam_lr: Any, params: PyTree, axes: PyTree | None):
    """optax's Muon; decay applies (masked) to the Muon matrices only, not the AdamW leaves.

    optax's AdamW branch inside `muon` takes no decay mask, so we give it no decay: under Muon
    the embedding and output layer are not decayed (norms and biases never are).
    """
    from optax.contrib import muon

    mask = decay_mask(cfg, params, axes)
    by_path = dict(zip(jax.tree.leaves(param_paths(params)), jax.tree.leaves(mask), strict=True))

    def mask_fn(tree: PyTree) -> PyTree:  # called on the Muon-only subtree (MaskedNode elsewhere)
        return jax.tree.map(lambda path: by_path[path], param_paths(tree))

    return muon(
        lr,
        beta=cfg.b1,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        weight_decay_mask=mask_fn,
        adam_b1=cfg.b1,
        adam_b2=cfg.b2,
        adam_weight_decay=0.0,
        adam_learning_rate=adam_lr,
        muon_weight_dimension_numbers=muon_dimensions(params, axes),
    )


def _fields(cfg: OptimConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
