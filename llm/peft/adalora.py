"""AdaLoRA (Zhang et al. 2023, arXiv:2303.10512): an SVD-form update W + scale * P diag(lambda) Q.

    tree, axes = init_adalora(cfg.peft, abstract_params(cfg.model), logical_axes(cfg.model), key)
    model = apply_adalora(base, tree)    # what the loss runs
    base_again = unmerge(model, tree)    # W within float rounding

Where LoRA's A @ B has a fixed rank, AdaLoRA writes the update as P Lambda Q, a singular
value decomposition in form: P [in, r] holds left singular vectors, lambda [r] the singular
values, Q [r, out] the right singular vectors. Zeroing lambda_i removes the triplet
(P[:, i], lambda_i, Q[i]) without touching P or Q, so the rank of each matrix can be changed
during training by masking lambdas (llm/peft/rank_budget.py allocates a global budget of
triplets to the matrices that matter most). P and Q are kept near orthonormal by a
regulariser (paper eq. 4, `orth_penalty` here; its gradient is added by
`orthogonality_regularizer`), so that the lambdas stay meaningful as singular values.

Per target, shapes follow the base weight exactly as LoRA's (llm/peft/lora.py, whose target
finding and axes this module reuses):

    P:      [layers, *in, r]   axes ("layers", *in_axes, None)   normal, std 1/sqrt(fan_in)
    lambda: [layers, r]        axes ("layers", None)             zeros: step 0 is the base model
    Q:      [layers, r, *out]  axes ("layers", None, *out_axes)  normal, std 1/sqrt(fan_out)
    scale:  []  frozen, alpha / r (or alpha / sqrt(r) with rslora)

The paper and PEFT draw P and Q from a Gaussian; the standard deviations here make P's columns
and Q's rows unit-norm in expectation, i.e. close to the orthonormality the regulariser asks
for, so it does not start by pulling hard on them. As in LoRA the update is merged into W
inside the jitted loss (docs/peft.md); each layer's matrix is one adapted matrix of rank r.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from llm.config.peft import PeftConfig
from llm.peft.lora import LAYERS, Target, _nest, add_updates, find_targets, lora_axes, path_of
from llm.typing import PyTree

NAME = "adalora"  # the adapter's component name in the params / frozen trees
P, LAMBDA, Q, SCALE = "p", "lambda", "q", "scale"  # leaf names of one adapted target


def adalora_axes(targets: list[Target]) -> PyTree:
    """Logical axes: P and Q as LoRA's A and B (the base weight's axes, an unsharded rank)."""

    def convert(node: dict) -> dict:
        if "a" in node:
            return {P: node["a"], LAMBDA: PartitionSpec(LAYERS, None), Q: node["b"],
                    SCALE: node["scale"]}  # fmt: skip
        return {key: convert(value) for key, value in node.items()}

    return convert(lora_axes(targets))


def init_adalora(
    cfg: PeftConfig, model: PyTree, axes: PyTree, key: jax.Array
) -> tuple[PyTree, PyTree]:
    """(adapter tree, its logical axes) for the abstract (or concrete) decoder `model`."""
    targets = find_targets(cfg, model, axes)
    dtypes = {path_of(p): x.dtype for p, x in jax.tree_util.tree_flatten_with_path(model)[0]}
    keys = jax.random.split(key, len(targets))
    entries = {}
    for k, t in zip(keys, targets, strict=True):
        dtype, layers = dtypes[t.path], t.shape[0]
        fan_in, fan_out = math.prod(t.in_shape), math.prod(t.out_shape)
        kp, kq = jax.random.split(k)
        p = jax.random.normal(kp, (layers, *t.in_shape, cfg.rank), jnp.float32)
        q = jax.random.normal(kq, (layers, cfg.rank, *t.out_shape), jnp.float32)
        entries[t.path] = {
            P: (p / math.sqrt(fan_in)).astype(dtype),
            LAMBDA: jnp.zeros((layers, cfg.rank), dtype),
            Q: (q / math.sqrt(fan_out)).astype(dtype),
            SCALE: jnp.asarray(cfg.scale, jnp.float32),
        }
    return _nest(entries), adalora_axes(targets)


def entries(adapter: PyTree, prefix: str = "") -> dict[str, dict]:
    """{"blocks/attn/q/w": {"p", "lambda", "q", ...}} from the nested adapter tree."""
    if LAMBDA in adapter:
        return {prefix.rstrip("/"): adapter}
    out = {}
    for key, value in adapter.items():
        out.update(entries(value, f"{prefix}{key}/"))
    return out


def flat_pq(entry: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """P as [layers, in, r] and Q as [layers, r, out] (the in / out axes flattened)."""
    p, q = entry[P], entry[Q]
    rank = p.shape[-1]
    return p.reshape(p.shape[0], -1, rank), q.reshape(q.shape[0], rank, -1)


def delta(entry: dict[str, jax.Array], shape: tuple[int, ...]) -> jax.Array:
    """scale * P diag(lambda) Q in float32, reshaped to the base weight's `shape`."""
    p2, q2 = flat_pq(entry)
    p_lam = p2.astype(jnp.float32) * entry[LAMBDA].astype(jnp.float32)[:, None, :]
    update = jnp.matmul(p_lam, q2, preferred_element_type=jnp.float32)
    return (entry[SCALE] * update).reshape(shape)


def _check_fits(path: str, entry: dict[str, jax.Array], shape: tuple[int, ...]) -> None:
    """P [layers, *in, r], lambda [layers, r], Q [layers, r, *out] must tile the weight."""
    p, lam, q = entry[P].shape, entry[LAMBDA].shape, entry[Q].shape
    fits = p[0] == q[0] == shape[0] and lam == (shape[0], p[-1]) and q[1] == p[-1]
    if not fits or (*p[1:-1], *q[2:]) != tuple(shape[1:]):
        raise ValueError(
            f"AdaLoRA adapter for {path} has P {p}, lambda {lam} and Q {q}, which do not fit "
            f"the weight {shape} (an adapter built for another model config?)"
        )


def _add(model: PyTree, adapter: PyTree, sign: float) -> PyTree:
    """The decoder tree with sign * scale * P diag(lambda) Q added to each adapted weight."""

    def update(path: str, entry: dict, shape: tuple[int, ...]) -> jax.Array:
        _check_fits(path, entry, shape)
        return sign * delta(entry, shape)

    return add_updates(model, adapter, update, lambda e: LAMBDA in e)


def apply_adalora(model: PyTree, adapter: PyTree) -> PyTree:
    """W + scale * P diag(lambda) Q for every target; what `model_params` runs in the loss."""
    return _add(model, adapter, 1.0)


merge = apply_adalora  # the same sum, run once outside the loss (export, serving)


def unmerge(merged: PyTree, adapter: PyTree) -> PyTree:
    """The base weights back from merged ones (exact up to float rounding)."""
    return _add(merged, adapter, -1.0)


def ranks(adapter: PyTree) -> dict[str, list[int]]:
    """Rank of each adapted matrix, layer by layer: its count of nonzero lambdas."""
    return {
        path: [int(n) for n in jnp.sum(e[LAMBDA] != 0, axis=-1)]
        for path, e in entries(adapter).items()
    }


def _gram_gaps(entry: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(P, P^T P - I, Q, Q Q^T - I) per layer, float32, in and out axes flattened."""
    p2, q2 = (x.astype(jnp.float32) for x in flat_pq(entry))
    eye = jnp.eye(p2.shape[-1], dtype=jnp.float32)
    return (
        p2,
        jnp.einsum("lir,lis->lrs", p2, p2) - eye,
        q2,
        jnp.einsum("lro,lso->lrs", q2, q2) - eye,
    )


def orth_penalty(adapter: PyTree) -> jax.Array:
    """R = sum over adapted matrices of ||P^T P - I||_F^2 + ||Q Q^T - I||_F^2 (paper eq. 4)."""
    total = jnp.zeros((), jnp.float32)
    for entry in entries(adapter).values():
        _, gap_p, _, gap_q = _gram_gaps(entry)
        total += jnp.sum(jnp.square(gap_p)) + jnp.sum(jnp.square(gap_q))
    return total


def orth_gradient(entry: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """dR/dP = 4 P (P^T P - I) and dR/dQ = 4 (Q Q^T - I) Q, in P's and Q's own shapes.

    Both Gram gaps are symmetric, so the derivative of ||G||_F^2 with G = P^T P - I is
    2 (P G + P G^T) = 4 P G, and likewise for Q."""
    p2, gap_p, q2, gap_q = _gram_gaps(entry)
    grad_p = 4.0 * jnp.einsum("lir,lrs->lis", p2, gap_p)
    grad_q = 4.0 * jnp.einsum("lrs,lso->lro", gap_q, q2)
    return grad_p.reshape(entry[P].shape), grad_q.reshape(entry[Q].shape)


def orthogonality_regularizer(gamma: float) -> optax.GradientTransformation:
    """Adds gamma * dR/dP and gamma * dR/dQ to the adapter's gradients (paper eq. 5).

    This equals training on loss + gamma * R without any loss knowing about AdaLoRA: the
    gradient of a sum is the sum of gradients, and R depends on P and Q alone. It must come
    first in the chain, where updates are still gradients (before clipping, as for a loss
    term). Leaves outside the `adalora` component pass through unchanged."""

    def update_fn(updates: PyTree, state: optax.EmptyState, params: PyTree = None):
        if params is None:
            raise ValueError("the AdaLoRA orthogonality regulariser needs the params")
        if NAME not in updates or gamma == 0.0:
            return updates, state
        return {**updates, NAME: _with_orth(updates[NAME], params[NAME], gamma)}, state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _with_orth(grads: PyTree, params: PyTree, gamma: float) -> PyTree:
    """`grads` (an adapter subtree) with gamma * dR added to each target's P and Q."""
    if LAMBDA in grads:
        grad_p, grad_q = orth_gradient(params)
        return {**grads, P: grads[P] + (gamma * grad_p).astype(grads[P].dtype),
                Q: grads[Q] + (gamma * grad_q).astype(grads[Q].dtype)}  # fmt: skip
    return {key: _with_orth(value, params[key], gamma) for key, value in grads.items()}
