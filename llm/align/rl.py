"""The RL loop: `train_rl(cfg)` trains an RL loss (PPO, GRPO) on rollouts it generates.

    result = train_rl(load_config("configs/grpo_tiny.yaml"))

Each iteration (llm/train/losses/rl.py states the protocol the loss implements):
  1. takes `rl.prompts` train prompts (data.format=prompts; a seeded order that is a pure
     function of the iteration, llm/data/prompts.py `PromptOrder`);
  2. samples `rl.group_size` completions of each with the inference engine over the current
     policy (`model_params(state.params, state.frozen)`, adapters merged), at
     `rl.temperature`, one seed per row from (train.seed, iteration) (llm/align/rollout.py);
  3. scores them with the rewards of `rl.rewards` (llm/align/rewards.py);
  4. runs `loss.score_rollouts` (jitted: old log-probs, reference log-probs, values) and
     `loss.training_batch` (host: advantages; carries the loss's JSON state, e.g. PPO's KL
     coefficient);
  5. takes `rl.epochs` passes over the N = prompts * group_size rollouts in seeded random
     minibatches of `train.batch_size` through the shared jitted train step (step.py:
     gradient accumulation, clipping, divergence checks are the trainer's).

`train.steps` counts optimiser steps, so iterations = steps / (epochs * N / batch_size);
both divisions must be whole. The run is built like llm/train/loop.py's Trainer (layout,
`run_trainable` so the reference and any head exist, warm start from `train.init_from`,
resume, `train.overwrite`), and writes metrics.jsonl the same way: split "train" per optimiser
step, "rollout" per iteration (mean reward and each reward, KL to the reference, completion
length, generation vs training seconds, rollout tokens/s) and "val" per evaluation (greedy
mean reward on `rl.eval_prompts` held-out prompts, at step 0, every `train.eval_every` steps
and at the end). A checkpoint's data state is {"iteration", "loss_state"}, so a resumed run
continues exactly. PEFT methods that change the forward pass (prompt, prefix, bottleneck
adapters) are refused: the engine runs plain decoder weights and would sample from another
policy than the one trained.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from llm.align.rewards import make_rewards
from llm.align.rollout import check_room, rollout_rows, row_seeds, sample_groups
from llm.checkpoint import Checkpointer, tokenizer_with_template
from llm.config import Config, to_dict
from llm.data.device import to_device
from llm.data.prompts import PromptOrder, load_prompts
from llm.inference.engine import Engine
from llm.model.accounting import train_flops_per_token
from llm.peft import FORWARD
from llm.sharding import make_mesh, with_activation_sharding
from llm.sharding.init import batch_shardings, make_plan
from llm.train.build import memory_report, run_trainable, state_layout
from llm.train.logprobs import ROW_LEAVES
from llm.train.losses import check_batch_leaves, make_loss
from llm.train.losses.rl import ROW_AXES, RLLoss, Rollouts
from llm.train.metrics import MetricsLogger, measure_peak_flops
from llm.train.monitor import TrainingDiverged, Window, flush
from llm.train.optim import make_schedule
from llm.train.preemption import SignalFlag
from llm.train.run_checks import check_encoder_loss
from llm.train.start import start_run
from llm.train.step import make_train_step
from llm.train.trainable import Trainable, model_params
from llm.train.warm_start import warm_start_config

ROLLOUT_FIELDS = {"temperature": "temperature", "max_new_tokens": "max_new_tokens"}


def for_rollouts(loss: RLLoss, rl: Any) -> RLLoss:
    """The loss with the rollouts' settings it declares as fields (`temperature`: scores under
    the sampling distribution; `max_new_tokens`: GRPO's constant aggregation) filled in from
    `rl:`. A loss without a temperature field cannot score samples drawn at T != 1."""
    fields = {f.name for f in dataclasses.fields(loss)} if dataclasses.is_dataclass(loss) else set()
    if rl.temperature != 1.0 and "temperature" not in fields:
        raise ValueError(
            f"rl.temperature={rl.temperature}, but loss {loss.name!r} has no temperature field "
            "and would score the rollouts under softmax(logits), not the distribution they "
            "were sampled from; use rl.temperature=1"
        )
    updates = {f: getattr(rl, k) for k, f in ROLLOUT_FIELDS.items() if f in fields}
    return dataclasses.replace(loss, **updates)


def iteration_plan(cfg: Config) -> tuple[int, int]:
    """(optimiser steps per iteration, iterations); uneven divisions are config errors."""
    rl, t = cfg.rl, cfg.train
    n = rl.prompts * rl.group_size
    if n % t.batch_size:
        raise ValueError(f"rl.prompts * rl.group_size = {n} rollouts per iteration is not a "
                         f"multiple of train.batch_size={t.batch_size}")  # fmt: skip
    per_iter = rl.epochs * n // t.batch_size
    if t.steps % per_iter:
        raise ValueError(
            f"train.steps={t.steps} is not a whole number of iterations of {per_iter} optimiser "
            f"steps (rl.epochs={rl.epochs} x {n} rollouts / train.batch_size={t.batch_size})"
        )
    return per_iter, t.steps // per_iter


class RLTrainer:
    """One RL run: state, step, scorer, prompts, rewards, checkpoints (see the module doc)."""

    def __init__(self, cfg: Config, *, loss: RLLoss | None = None, tokenizer: Any = None,
                 trainable: Trainable | None = None) -> None:  # fmt: skip
        cfg = warm_start_config(cfg)
        self.cfg, t, rl = cfg, cfg.train, cfg.rl
        if cfg.data.format != "prompts":
            raise ValueError(f"the RL loop reads prompts: set data.format=prompts "
                             f"(data.format={cfg.data.format!r})")  # fmt: skip
        if jax.process_count() > 1:
            raise ValueError("the RL loop runs in one process (rollouts are generated on it)")
        if t.layer_stats:
            raise ValueError("train.layer_stats is read by llm.train.train; the RL loop does "
                             "not log per-layer statistics (set it false)")  # fmt: skip
        loss = loss if loss is not None else make_loss(cfg)
        check_encoder_loss(cfg, loss.name)  # an encoder cannot generate rollouts
        if not isinstance(loss, RLLoss):
            raise ValueError(f"loss {loss.name!r} is not an RL loss (llm/train/losses/rl.py)")
        self.loss = for_rollouts(loss, rl)
        self.steps_per_iter, self.iterations = iteration_plan(cfg)
        self.tokenizer = tokenizer or tokenizer_with_template(cfg.data.tokenizer)
        self.train_prompts = load_prompts(cfg, "train", self.tokenizer)
        self.val_prompts = load_prompts(cfg, "validation", self.tokenizer)[: rl.eval_prompts]
        check_room(self.train_prompts + self.val_prompts, rl.max_new_tokens, t.seq_len)
        self.order = PromptOrder(self.train_prompts, cfg.data.seed)
        self.rewards = make_rewards(rl)
        self.plan = make_plan(cfg, make_mesh(cfg.mesh))
        self.layout = state_layout(cfg, self.plan, run_trainable(cfg, self.loss, trainable))
        if forward := sorted(set(self.layout.split.params) & set(FORWARD)):
            raise ValueError(
                f"peft.method={cfg.peft.method} changes the forward pass (components "
                f"{forward}), which the inference engine does not apply: rollouts would come "
                "from another policy than the one trained; use lora, dora, ia3, qlora or none"
            )
        self.batch_sharding = batch_shardings(self.plan, self.loss.batch_axes)
        self.row_sharding = batch_shardings(self.plan, dict.fromkeys(ROW_LEAVES, ROW_AXES))
        self.step_fn = make_train_step(
            cfg, with_activation_sharding(self.loss, self.plan.mesh, self.plan.rules),
            self.layout.tx, make_schedule(cfg.optim, t.steps),
            state_shardings=self.layout.shardings, batch_sharding=self.batch_sharding,
        )  # fmt: skip
        self.score_fn = jax.jit(self.loss.score_rollouts)
        self.run_dir = Path(t.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt = Checkpointer(self.run_dir, keep=t.keep_checkpoints, keep_best=t.keep_best,
                                 async_save=t.async_checkpointing)  # fmt: skip
        self.notes: list[str] = []
        self.iteration, self.loss_state = 0, {}  # _start restores them when it resumes
        self.resumed_from = self._start()
        self.val: dict[str, float] | None = None

    def _start(self) -> int | None:
        """Resume, fresh start or start over, as the trainer does (llm/train/start.py); the
        checkpoint's iteration and loss state must fit this config's iteration plan."""

        def on_restore(restored: Any) -> None:
            iteration = int(restored.data_state["iteration"])
            if iteration * self.steps_per_iter != restored.step:
                raise ValueError(
                    f"the checkpoint at step {restored.step} holds iteration {iteration}, "
                    f"but this config takes {self.steps_per_iter} optimiser steps per "
                    "iteration: rl.prompts, rl.group_size, rl.epochs or train.batch_size "
                    "changed since it was written; resume with the run's config.yaml"
                )
            self.iteration = iteration
            self.loss_state = dict(restored.data_state["loss_state"])

        start = start_run(self.cfg, self.layout, self.plan, self.ckpt, on_restore=on_restore)
        self.state = start.state
        self.notes += start.notes
        if start.warm_from is not None:
            self.notes.append(f"starting from the weights of {start.warm_from}")
        return None if start.restored is None else start.restored.step

    def engine(self) -> Engine:
        """The engine over the current policy's weights (adapters merged)."""
        weights = model_params(self.state.params, self.state.frozen)
        return Engine(self.cfg.model, weights, self.tokenizer, max_len=self.cfg.train.seq_len)

    def rollouts(self, iteration: int) -> tuple[Rollouts, dict[str, float]]:
        """One iteration's rollouts, rewarded; metrics of generation and rewards."""
        rl, t = self.cfg.rl, self.cfg.train
        prompts = self.order.take(iteration, rl.prompts)
        n = len(prompts) * rl.group_size
        start = time.perf_counter()
        samples = sample_groups(
            self.engine(), prompts, group_size=rl.group_size, max_new_tokens=rl.max_new_tokens,
            temperature=rl.temperature, top_k=rl.top_k, seeds=row_seeds(t.seed, iteration, n),
        )  # fmt: skip
        gen_s = time.perf_counter() - start
        rows, sample_logp = rollout_rows(prompts, samples, rl.group_size, t.seq_len,
                                         self.tokenizer.pad_id)  # fmt: skip
        each_prompt = [p for p in prompts for _ in range(rl.group_size)]
        total, each = self.rewards(each_prompt, [s.text for s in samples])
        group = np.repeat(np.arange(len(prompts), dtype=np.int32), rl.group_size)
        tokens = sum(len(s.token_ids) for s in samples)
        metrics = {
            "reward": float(total.mean()),
            **{f"reward_{k}": float(v.mean()) for k, v in each.items()},
            "completion_tokens": tokens / n,
            "stopped": float(np.mean([s.finish_reason == "stop" for s in samples])),
            "gen_s": gen_s,
            "rollout_tokens_per_s": tokens / gen_s,
        }
        return Rollouts(rows, sample_logp, total, group), metrics

    def evaluate(self) -> dict[str, float]:
        """Greedy mean reward (and each reward) on the held-out prompts."""
        samples = sample_groups(
            self.engine(),
            self.val_prompts,
            group_size=1,
            max_new_tokens=self.cfg.rl.max_new_tokens,
            temperature=0.0,
        )
        total, each = self.rewards(self.val_prompts, [s.text for s in samples])
        self.val = {
            "reward": float(total.mean()),
            **{f"reward_{k}": float(v.mean()) for k, v in each.items()},
            "completion_tokens": float(np.mean([len(s.token_ids) for s in samples])),
            "prompts": len(self.val_prompts),
        }
        return self.val

    def put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        check_batch_leaves(self.loss, batch)
        return to_device(batch, self.batch_sharding)

    def save(self, val: dict[str, float] | None = None) -> bool:
        data_state = {"iteration": self.iteration, "loss_state": self.loss_state}
        meta = {"config": to_dict(self.cfg), "tokenizer": self.cfg.data.tokenizer}
        # keep_best keeps the lowest "val_loss": the negated held-out reward
        best = None if val is None else -val["reward"]
        return self.ckpt.save(self.state, data_state=data_state, meta=meta, val_loss=best)


def _train_iteration(tr: RLTrainer, log: MetricsLogger, rates) -> dict[str, float]:
    """Rollouts -> scores -> training batch -> rl.epochs passes of minibatches."""
    cfg, it = tr.cfg, tr.iteration
    rollouts, metrics = tr.rollouts(it)
    start = time.perf_counter()
    rows = to_device(dict(rollouts.rows), tr.row_sharding)
    scored = jax.device_get(tr.score_fn(tr.state.params, tr.state.frozen, rows))
    batch, loss_metrics, tr.loss_state = tr.loss.training_batch(rollouts, scored, tr.loss_state)
    window, B = Window(int(tr.state.step)), cfg.train.batch_size
    for epoch in range(cfg.rl.epochs):
        order = np.random.default_rng([cfg.train.seed, it, epoch]).permutation(rollouts.size)
        for k in range(0, rollouts.size, B):
            mb = {key: value[order[k : k + B]] for key, value in batch.items()}
            tr.state, step_metrics = tr.step_fn(tr.state, tr.put(mb))
            window.add(int(tr.state.step), step_metrics)
    flush(window, log, tr.loss.derived_metrics, rates)  # raises TrainingDiverged
    train_s = time.perf_counter() - start
    tr.iteration = it + 1
    metrics.update(loss_metrics)
    metrics.update(iteration=it, train_s=train_s,
                   gen_share=metrics["gen_s"] / (metrics["gen_s"] + train_s))  # fmt: skip
    return metrics


def _crossed(step: int, before: int, every: int) -> bool:
    return bool(every) and step // every > before // every


def _loop(tr: RLTrainer, flag: SignalFlag, log: MetricsLogger) -> str | None:
    cfg, t = tr.cfg, tr.cfg.train
    rates = (t.batch_size * t.seq_len, train_flops_per_token(cfg.model, t.seq_len),
             t.peak_flops or measure_peak_flops(cfg.model.dtype))  # fmt: skip
    if tr.resumed_from is None:
        log.log(0, tr.evaluate(), prefix="val")  # the starting point's held-out reward
        log.message(f"step 0: held-out greedy reward {tr.val['reward']:.4f} "
                    f"({len(tr.val_prompts)} prompts)")  # fmt: skip
    elif tr.iteration >= tr.iterations:
        log.message(f"{tr.run_dir} is finished at step {tr.resumed_from}: nothing to train "
                    "(raise train.steps to go on)")  # fmt: skip
    try:
        _iterations(tr, flag, log, rates)
    except TrainingDiverged:
        raise
    except Exception:
        _save_before_failing(tr, log)
        raise
    _finish(tr, flag, log)
    return flag.name


def _save_before_failing(tr: RLTrainer, log: MetricsLogger) -> None:
    """After an unexpected error (rollouts, rewards, evaluation), saves the state when it
    lies on an iteration boundary (a half-trained iteration cannot be resumed exactly)."""
    try:
        step = int(tr.state.step)
        if step != tr.iteration * tr.steps_per_iter:
            log.message(f"error inside iteration {tr.iteration}: step {step} is not saved")
        elif tr.save():
            tr.ckpt.wait()
            log.message(f"error after iteration {tr.iteration}: saved step {step} first")
    except Exception as err:  # the state itself may be what failed
        log.message(f"error: no checkpoint could be saved after it ({err!r:.200})")


def _iterations(tr: RLTrainer, flag: SignalFlag, log: MetricsLogger, rates: Any) -> None:
    t = tr.cfg.train
    while tr.iteration < tr.iterations and flag.name is None:
        before = int(tr.state.step)
        metrics = _train_iteration(tr, log, rates)
        step = int(tr.state.step)
        log.log(step, metrics, prefix="rollout")
        log.message(
            f"iteration {tr.iteration}/{tr.iterations} (step {step}): reward "
            f"{metrics['reward']:.4f}, kl {metrics.get('kl', float('nan')):.4f}, "
            f"{metrics['completion_tokens']:.1f} tokens, generation {metrics['gen_share']:.0%}"
        )
        evaluating = _crossed(step, before, t.eval_every) and step < t.steps
        if evaluating:
            log.log(step, tr.evaluate(), prefix="val")
            log.message(f"step {step}: held-out greedy reward {tr.val['reward']:.4f}")
        if (evaluating or _crossed(step, before, t.ckpt_every)) and step < t.steps:
            tr.save(tr.val if evaluating else None)


def _finish(tr: RLTrainer, flag: SignalFlag, log: MetricsLogger) -> None:
    """The final checkpoint (on disk before the final evaluation), or the signal's."""
    if flag.name is None and int(tr.state.step) > (tr.resumed_from or 0):
        tr.save()
        tr.ckpt.wait()
        log.log(int(tr.state.step), tr.evaluate(), prefix="val")
        log.message(f"step {int(tr.state.step)}: held-out greedy reward {tr.val['reward']:.4f}")
    elif flag.name is not None:
        tr.save()
        tr.ckpt.wait()
        log.message(f"{flag.name} received: saved step {int(tr.state.step)} and stopping")


def train_rl(cfg: Config, *, loss: RLLoss | None = None, tokenizer: Any = None,
             trainable: Trainable | None = None) -> dict[str, Any]:  # fmt: skip
    """Trains `cfg` (an RL loss on data.format=prompts) to train.steps; a summary dict."""
    with SignalFlag() as flag:
        tr = RLTrainer(cfg, loss=loss, tokenizer=tokenizer, trainable=trainable)
        t, start = tr.cfg.train, time.perf_counter()
        log = MetricsLogger(tr.run_dir, tr.cfg, total_steps=t.steps,
                            start_step=int(tr.state.step))  # fmt: skip
        try:
            for note in tr.notes:
                log.message(note)
            log.message(memory_report(tr.cfg, jax.device_count()))
            if tr.resumed_from is not None:
                log.message(f"resumed at step {tr.resumed_from} (iteration {tr.iteration})")
            stopped = _loop(tr, flag, log)
        finally:
            log.close()
            tr.ckpt.wait()
            tr.ckpt.close()
    return {
        "step": int(tr.state.step), "iteration": tr.iteration, "val": tr.val,
        "stopped": stopped, "exit_status": t.requeue_exit_status if stopped else 0,
        "resumed_from": tr.resumed_from, "wall_s": time.perf_counter() - start,
        "run_dir": str(tr.run_dir), "params": model_params(tr.state.params, tr.state.frozen),
        "state": tr.state,
    }  # fmt: skip
