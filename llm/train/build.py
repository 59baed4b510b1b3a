"""The train state of a run, laid out on the mesh and created in its shards.

    layout = state_layout(cfg, plan, trainable)       # abstract state, specs, optimiser
    state = init_train_state(cfg, layout)             # fresh weights, each leaf sharded
    state = init_train_state(cfg, layout, loaded)     # warm start: given model weights
    step = make_train_step(cfg, loss, layout.tx, schedule,
                           state_shardings=layout.shardings, batch_sharding=...)

Initialisation is `jax.jit(build, out_shardings=...)`: the partitioner gives each device
only the slice of the RNG computation that produces its own shard (threefry is
partitionable by default since JAX 0.5), so no host or device ever holds the full model.
A warm start passes the loaded model params in (already placed in their shards by the
loader) and only splits them and builds fresh optimiser state.

Only `params` reaches the optimiser (its state, decay masks and clipping); `frozen` is carried
through with its own specs. With `train.tbptt` the state also holds the zero recurrent state of
every batch row (`TrainState.carry`), its row axis sharded like the batch's. The decoder is
initialised from the run's seed exactly as it was before trainable/frozen existed, so
pretraining is bit for bit unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax
from jax.sharding import PartitionSpec

from llm.checkpoint.load import model_config_of
from llm.config import Config
from llm.data.classification import resolve_labels
from llm.model import init_params, logical_axes
from llm.model.cache import init_cache
from llm.model.functional import abstract_params
from llm.sharding import memory
from llm.sharding import rules as R
from llm.sharding.init import ShardingPlan, opt_state_specs, tree_specs
from llm.train.losses import Loss, make_loss
from llm.train.losses.causal_lm import initial_carry
from llm.train.losses.rl import RLLoss
from llm.train.optim import make_optimizer
from llm.train.state import TrainState, init_state
from llm.train.step import row_axis
from llm.train.trainable import Split, Trainable, trainable_from_config
from llm.typing import PyTree

EXTRA_KEY = 1  # extra components are built from fold_in(seed key, EXTRA_KEY)


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """Everything about a run's TrainState that is known before any array exists."""

    trainable: Trainable
    split: Split  # abstract params / frozen trees and their logical axes
    tx: optax.GradientTransformation
    abstract: TrainState  # ShapeDtypeStructs
    specs: TrainState  # mesh PartitionSpecs
    shardings: TrainState  # NamedShardings: the step's in/out shardings, restore targets

    def abstract_sharded(self) -> TrainState:
        """ShapeDtypeStructs with shardings: what `Checkpointer.restore` fills on this mesh."""
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            self.abstract,
            self.shardings,
        )


def run_trainable(cfg: Config, loss: Loss, trainable: Trainable | None = None) -> Trainable:
    """What the run trains: `trainable` (default: `train.freeze` / `peft:` from `cfg`) plus the
    components the loss declares (`Loss.components`, e.g. a classification head), so a loss's
    head exists under full fine-tuning, `train.freeze` and every `peft.method`; and the frozen
    reference policy when the loss scores against one (`Loss.reference`)."""
    base = trainable or trainable_from_config(cfg)
    extra = loss.components(cfg.model)
    if clash := sorted(set(extra) & set(base.extra)):
        raise ValueError(f"loss {loss.name!r} adds components {clash} that the trainable has")
    if extra:
        base = dataclasses.replace(base, extra={**base.extra, **extra})
    if loss.reference and not base.reference:
        base = dataclasses.replace(base, reference=True)
    return base


def abstract_split(cfg: Config, trainable: Trainable) -> Split:
    """The run's (params, frozen) as ShapeDtypeStructs, with their logical axes."""
    model = abstract_params(cfg.model)
    trainable.check(model)
    return trainable.split(model, logical_axes(cfg.model))


def make_tx(cfg: Config, split: Split) -> optax.GradientTransformation:
    """The optimiser over the trained tree only."""
    return make_optimizer(cfg.optim, cfg.train.steps, split.params, split.params_axes, cfg.peft)


def _builder(cfg: Config, trainable: Trainable, tx: optax.GradientTransformation):
    t = cfg.train
    scale = t.loss_scale_init if cfg.model.dtype == "float16" else 1.0
    axes = logical_axes(cfg.model)
    carry = (lambda: initial_carry(cfg.model, t.batch_size)) if t.tbptt else dict

    def build(key: jax.Array, loaded: PyTree | None = None) -> TrainState:
        model = init_params(cfg.model, key) if loaded is None else loaded
        split = trainable.split(model, axes, key=jax.random.fold_in(key, EXTRA_KEY))
        return init_state(
            split.params,
            tx,
            seed=t.seed,
            loss_scale=scale,
            spike_window=t.spike_window,
            frozen=split.frozen,
            carry=carry(),
        )

    return build


def check_tbptt(cfg: Config) -> None:
    """train.tbptt needs a stream order to carry state along and a model that has a state."""
    if not cfg.train.tbptt:
        return
    if cfg.data.order != "streams":
        raise ValueError(
            "train.tbptt=true carries each batch row's state into the next batch, which only "
            f"continues the same text with data.order=streams (got {cfg.data.order!r})"
        )
    initial_carry(cfg.model, 1)  # raises for a model without a recurrent state


def carry_specs(plan: ShardingPlan, carry: PyTree) -> PyTree:
    """Each carry leaf's row axis (the B of its name) laid out like the batch's rows."""

    def spec(name: str, x: Any) -> PartitionSpec:
        logical = [None] * len(x.shape)
        logical[row_axis(name)] = "batch"
        return R.mesh_spec(plan.rules, tuple(logical))

    return {k: spec(k, v) for k, v in carry.items()}


def state_layout(cfg: Config, plan: ShardingPlan, trainable: Trainable) -> StateLayout:
    """Abstract state, mesh specs and shardings of the run (raises on a bad `freeze`, or a
    `train.tbptt` the data order or model cannot serve)."""
    check_tbptt(cfg)
    split = abstract_split(cfg, trainable)
    tx = make_tx(cfg, split)
    abstract = jax.eval_shape(_builder(cfg, trainable, tx), jax.random.key(0))
    params_specs = tree_specs(plan, split.params_axes)
    R.check_divisible(abstract.params, params_specs, dict(plan.mesh.shape))
    frozen_specs = tree_specs(plan, split.frozen_axes)
    R.check_divisible(abstract.frozen, frozen_specs, dict(plan.mesh.shape))
    replicated = jax.tree.map(lambda _: PartitionSpec(), abstract)
    specs = dataclasses.replace(
        replicated,
        params=params_specs,
        frozen=frozen_specs,
        opt_state=opt_state_specs(abstract.opt_state, abstract.params, params_specs),
        carry=carry_specs(plan, abstract.carry),
    )
    shardings = R.named(plan.mesh, specs)
    return StateLayout(trainable, split, tx, abstract, specs, shardings)


def init_train_state(cfg: Config, layout: StateLayout, loaded: PyTree | None = None) -> TrainState:
    """A step-0 TrainState created in its shards: fresh (seed `train.seed`) or from `loaded`."""
    build = _builder(cfg, layout.trainable, layout.tx)
    key = jax.random.key(cfg.train.seed)
    if loaded is None:
        return jax.jit(build, out_shardings=layout.shardings)(key)
    return jax.jit(build, out_shardings=layout.shardings)(key, loaded)


def memory_plan(
    cfg: Config, n_devices: int, trainable: Trainable | None = None, loss: Loss | None = None
) -> Any:
    """Per-device bytes of this run on `n_devices` (llm.sharding.memory), abstractly, in total
    and per component: the run's loss (default: `make_loss(cfg)`) adds its heads and, when it
    scores against one, the reference policy, so an alignment run's plan shows policy,
    reference, value and reward heads before anything is allocated."""
    loss = loss or make_loss(resolve_labels(cfg))
    split = abstract_split(cfg, run_trainable(cfg, loss, trainable))
    opt = jax.eval_shape(make_tx(cfg, split).init, split.params)
    rows = 2 if len(loss.batch_axes.get("inputs", ())) == 3 else 1  # pairs: [B, 2, L]
    rollout = rollout_bytes(cfg) if isinstance(loss, RLLoss) else 0
    return memory.plan(cfg, n_devices, split.params, split.params_axes, split.frozen,
                       split.frozen_axes, opt, scorer_bytes(cfg), rows, rollout)  # fmt: skip


def rollout_bytes(cfg: Config) -> int:
    """What the RL loop's engine adds while it generates (llm/align/rl.py): the decode layout's
    per-layer copy of the block weights (`unstack_layers`) and a KV cache of `train.seq_len`
    slots for the larger of the rollout batch (rl.prompts x rl.group_size) and the held-out
    batch (rl.eval_prompts), rounded up to the engine's power-of-two batch bucket."""
    rl = cfg.rl
    n = max(rl.prompts * rl.group_size, rl.eval_prompts)
    batch = 1 << (n - 1).bit_length()
    cache = jax.eval_shape(lambda: init_cache(cfg.model, batch, cfg.train.seq_len))
    blocks = abstract_params(cfg.model).get("blocks", {})  # baselines: no per-layer copy
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((cache, blocks)))


def scorer_bytes(cfg: Config) -> dict[str, int]:
    """{"reward_model": bytes} of the RL reward model (`rl.reward_model` with reward "model"),
    from its directory's config alone: the decoder at its param_dtype and the float32 scalar
    head, whole (llm/align/reward_model.py loads it unsharded); {} when the run has none."""
    rl = getattr(cfg, "rl", None)
    if rl is None or not rl.reward_model or "model" not in rl.rewards:
        return {}
    model_cfg = model_config_of(rl.reward_model).model
    decoder = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_params(model_cfg)))
    return {"reward_model": decoder + 4 * (model_cfg.d_model + 1)}


def memory_report(
    cfg: Config, n_devices: int, loss: Loss | None = None, trainable: Trainable | None = None
) -> str:
    """The `llm train --dry_run` memory table (also printed at the start of an alignment
    run: one whose loss keeps a reference or adds heads, and every RL run)."""
    return memory.report(cfg, memory_plan(cfg, n_devices, trainable, loss=loss))
