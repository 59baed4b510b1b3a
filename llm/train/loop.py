"""The training driver: `train(cfg)` runs, evaluates, checkpoints and resumes a run.

    result = train(load_config("configs/default.yaml"))

Order of business each step: next batch -> jitted step (asynchronous dispatch) -> every
`log_every` steps the pending metrics are fetched, checked and written. Nothing else forces
the host to wait for the device, so Python overhead overlaps with compute.

Failure handling (the promises and their tests: docs/reliability.md):
  * A non-finite loss, gradient or parameter aborts with `TrainingDiverged` naming the step,
    the loss, the norms and the parameters whose gradients are non-finite. Metrics are always
    checked before a checkpoint is written (and the Checkpointer refuses a non-finite state),
    so a diverged state never replaces a good one.
  * With `train.spike_skip`, spiking steps are skipped inside the step (see step.py) and
    counted; the count is logged and reported at the end.
  * SIGTERM / SIGINT, from the start of `train()` on, set a flag (preemption.py); the loop
    finishes the current step, writes a checkpoint, waits for it to reach the disk and returns
    `stopped` (the signal name) and `exit_status` (`train.requeue_exit_status`).
  * The final checkpoint is on disk before the final evaluation (and before the caller
    samples); any other error inside the loop first saves the steps since the last checkpoint
    when their metrics are finite.
  * On start the run-directory rules apply (run_dir.py): the newest checkpoint that verifies
    is restored with the data iterator's position, so the continued run matches an
    uninterrupted one; a fresh run in a directory with checkpoints needs `train.overwrite`;
    a finished run trains nothing. Otherwise `train.init_from` names weights to start from
    (a run, an `llm convert` or a Hugging Face directory, `llm.checkpoint.load_model`): they
    are restored straight into their shards, the optimiser state is fresh, and step 0 is
    evaluated so the starting point is on record. A resumed warm start continues from its
    own checkpoints. `config.yaml` is only written once these checks passed.

What is trained and how it is scored are arguments, not code paths: `loss` (a
`llm.train.losses.Loss`, default: the one `cfg.loss` names) and `trainable` (a
`llm.train.trainable.Trainable`, default: `train.freeze`). With data.order=streams a causal LM
loss reads the `continues` leaf, and with `train.tbptt` the step carries each row's recurrent
state to the next batch (llm/train/losses/causal_lm.py `StreamCausalLMLoss`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from llm.checkpoint import Checkpointer, tokenizer_with_template
from llm.checkpoint.manager import NonFiniteState
from llm.config import Config, to_dict
from llm.data import make_batches, resolve_labels
from llm.data.device import to_device
from llm.model.accounting import train_flops_per_token
from llm.sharding import make_mesh, with_activation_sharding
from llm.sharding.distributed import initialize
from llm.sharding.init import batch_shardings, make_plan
from llm.train.batchnorm_stats import calibrate_state, check_batchnorm_run, take_batches
from llm.train.build import memory_report, run_trainable, state_layout
from llm.train.layer_stats import make_activation_stats
from llm.train.losses import Loss, check_batch_leaves, make_loss
from llm.train.losses.causal_lm import StreamCausalLMLoss
from llm.train.metrics import MetricsLogger, measure_peak_flops
from llm.train.monitor import Silent, TrainingDiverged, Window, flush
from llm.train.optim import make_schedule
from llm.train.preemption import SignalFlag
from llm.train.run_checks import check_run_data
from llm.train.run_dir import logged
from llm.train.start import start_run
from llm.train.state import TrainState
from llm.train.step import make_train_step
from llm.train.trainable import Trainable, model_params
from llm.train.warm_start import warm_start_config

Batches = Iterator[dict[str, np.ndarray]]


def default_batches(cfg: Config, split: str, tokenizer: Any) -> Batches:
    # this process's rows of every global batch: all processes together make the batch
    return make_batches(
        cfg, split, tokenizer, process_index=jax.process_index(), process_count=jax.process_count()
    )


class Trainer:
    """One run: owns the state, the step function, the iterators and the sinks."""

    def __init__(
        self,
        cfg: Config,
        *,
        train_batches: Batches | None = None,
        val_batches: Callable[[], Iterable[dict[str, np.ndarray]]] | None = None,
        tokenizer: Any = None,
        loss: Loss | None = None,
        trainable: Trainable | None = None,
    ) -> None:
        cfg = resolve_labels(warm_start_config(cfg))  # init_from's model; the label set
        self.cfg, t = cfg, cfg.train
        self.run_dir = Path(t.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if tokenizer is None:  # an imported model's tokenizer brings its chat template
            tokenizer = tokenizer_with_template(cfg.data.tokenizer)
        self.tokenizer = tokenizer
        self.loss = _stream_loss(cfg, loss if loss is not None else make_loss(cfg))
        check_run_data(cfg, self.tokenizer, self.loss)
        check_batchnorm_run(cfg, self.loss)  # PreciseBN's batches, prefix and QAT
        self.plan = make_plan(cfg, make_mesh(cfg.mesh))  # fails here, before any compile
        self.schedule = make_schedule(cfg.optim, t.steps)
        self.base_trainable = trainable  # None: what cfg describes
        self.layout = state_layout(cfg, self.plan, run_trainable(cfg, self.loss, trainable))
        self.batch_sharding = batch_shardings(self.plan, self.loss.batch_axes)
        self.act_stats = (  # per-layer activation RMS (llm/train/layer_stats.py)
            make_activation_stats(cfg, self.loss.batch_axes, self.layout.split.params, self.plan)
            if t.layer_stats
            else None
        )
        loss_fn = self.loss.carried if t.tbptt else self.loss  # truncated BPTT carries state
        self.step_fn = make_train_step(
            cfg,
            with_activation_sharding(loss_fn, self.plan.mesh, self.plan.rules),
            self.layout.tx,
            self.schedule,
            state_shardings=self.layout.shardings,
            batch_sharding=self.batch_sharding,
        )
        self.ckpt = Checkpointer(
            self.run_dir,
            keep=t.keep_checkpoints,
            keep_best=t.keep_best,
            async_save=t.async_checkpointing,
        )
        if train_batches is None:
            train_batches = default_batches(cfg, "train", self.tokenizer)
        if val_batches is None:
            val_batches = lambda: default_batches(cfg, "validation", self.tokenizer)  # noqa: E731
        self.batches, self.val_batches = train_batches, val_batches
        self.resumed_from = self._start()  # sets state, warm_from and notes
        self.start = self.drawn = int(self.state.step)  # drawn: batches taken from `batches`
        self.val: dict[str, float] | None = None
        self.profiling = False
        self.bn_step: int | None = None  # norm=batchnorm: the step last calibrated at
        self.bn_batches: list[dict[str, np.ndarray]] | None = None  # ... and on what

    def _start(self) -> int | None:
        """Resumes, starts fresh or starts over (llm/train/start.py); returns the step resumed
        from. The data iterator takes the checkpoint's position (refusing another stream's)."""
        start = start_run(
            self.cfg, self.layout, self.plan, self.ckpt,
            on_restore=lambda restored: self.batches.set_state(restored.data_state),
        )  # fmt: skip
        self.state: TrainState = start.state
        self.warm_from: str | None = start.warm_from  # train.init_from's weights, if used
        self.notes = start.notes  # what the start did to the run directory, logged by _run
        return None if start.restored is None else start.restored.step

    def put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """A host batch checked against the loss's declared leaves, as global device arrays."""
        check_batch_leaves(self.loss, batch)
        return to_device(batch, self.batch_sharding)

    @property
    def model_params(self) -> Any:
        """The decoder's full param tree (trained and frozen leaves together)."""
        return model_params(self.state.params, self.state.frozen)

    @property
    def meta(self) -> dict[str, Any]:
        return {
            "config": to_dict(self.cfg),
            "tokenizer": self.cfg.data.tokenizer,
            "init_from": self.warm_from,
        }

    def save(self, val_loss: float | None = None) -> bool:
        """Starts a checkpoint of the current state; False if this state is on disk already."""
        try:
            return self.ckpt.save(
                self.state, data_state=self.batches.get_state(), meta=self.meta, val_loss=val_loss
            )
        except NonFiniteState as err:
            raise TrainingDiverged(f"{err}; the last good checkpoint is untouched") from None

    def calibrate_batchnorm(self, log: MetricsLogger) -> None:
        """norm=batchnorm: PreciseBN statistics into the state, once per step
        (llm/train/batchnorm_stats.py); nothing for other norms."""
        step, k = int(self.state.step), self.cfg.model.batchnorm_calibration_batches
        if self.cfg.model.norm != "batchnorm" or self.bn_step == step:
            return
        if self.bn_batches is None:  # the same K batches at every calibration
            self.bn_batches = take_batches(default_batches(self.cfg, "train", self.tokenizer), k)
        self.state = calibrate_state(self.cfg, self.state, self.bn_batches, self.put)
        self.bn_step = step
        log.message(f"step {step}: BatchNorm statistics pooled over {k} training batches")

    def run_eval(self, log: MetricsLogger) -> dict[str, float]:
        """The loss's own validation metrics (perplexity and bpb for language modelling)."""
        self.calibrate_batchnorm(log)
        self.val = self.loss.evaluate(
            self.state.params,
            self.state.frozen,
            self.val_batches(),
            tokenizer=self.tokenizer,
            max_batches=self.cfg.eval.batches,
            put=self.put,
        )
        step = int(self.state.step)
        log.log(step, self.val, prefix="val")
        log.message(f"step {step}: {self.loss.summary(self.val)}")
        return self.val


def _stream_loss(cfg: Config, loss: Loss) -> Loss:
    """The loss itself, or with data.order=streams its form that reads `continues` and can
    carry state (`StreamCausalLMLoss`, llm/train/losses/causal_lm.py)."""
    if cfg.data.order != "streams" or isinstance(loss, StreamCausalLMLoss):
        return loss
    return StreamCausalLMLoss.of(loss)


def train(
    cfg: Config,
    *,
    train_batches: Batches | None = None,
    val_batches: Callable[[], Iterable[dict[str, np.ndarray]]] | None = None,
    tokenizer: Any = None,
    loss: Loss | None = None,
    trainable: Trainable | None = None,
) -> dict[str, Any]:
    """Trains `cfg` to `cfg.train.steps` (resuming if possible); returns a summary dict.

    `train_batches` / `val_batches` replace the configured data pipeline (tests, custom data);
    `train_batches` must offer `get_state()` / `set_state()` like `llm.data.make_batches`.
    `loss` and `trainable` replace what `cfg.loss` and `train.freeze` describe (notebooks,
    losses written in Python, extra components such as heads or a reference model).
    A run stopped by a signal returns `stopped` (its name) and a nonzero `exit_status`.
    """
    initialize(cfg.mesh)  # multi-host jobs join here; a no-op for one process
    with SignalFlag() as flag:  # from here on a signal is recorded, never fatal
        trainer = Trainer(
            cfg,
            train_batches=train_batches,
            val_batches=val_batches,
            tokenizer=tokenizer,
            loss=loss,
            trainable=trainable,
        )
        try:
            return _run(trainer, flag)
        finally:
            trainer.ckpt.wait()
            trainer.ckpt.close()


def _profile(tr: Trainer, step: int, end: bool = False) -> None:
    """A jax.profiler trace (run_dir/profile) of steps profile_steps[0]+1 .. [1]."""
    if not tr.cfg.train.profile_steps:
        return
    first, last = tr.cfg.train.profile_steps
    if step == first and not end and not tr.profiling:
        jax.profiler.start_trace(str(tr.run_dir / "profile"))
        tr.profiling = True
    elif tr.profiling and (step == last or end):
        jax.block_until_ready(tr.state)
        jax.profiler.stop_trace()
        tr.profiling = False


def _run(tr: Trainer, flag: SignalFlag) -> dict[str, Any]:
    t = tr.cfg.train
    log = (
        MetricsLogger(tr.run_dir, tr.cfg, total_steps=t.steps, start_step=tr.start)
        if jax.process_index() == 0
        else Silent()
    )
    t_start, loss, stopped = time.perf_counter(), None, None
    for note in tr.notes:
        log.message(note)
    if tr.loss.reference or tr.loss.components(tr.cfg.model):  # policy, reference, heads
        log.message(memory_report(tr.cfg, jax.device_count(), tr.loss, tr.base_trainable))
    try:
        if tr.start >= t.steps:
            loss = _already_finished(tr, log)
        else:
            loss, stopped = _train(tr, flag, log)
    finally:
        log.close()
        _profile(tr, tr.start, end=True)
    return {
        "step": int(tr.state.step),
        "loss": loss,
        "val": tr.val,
        "stopped": stopped,
        "exit_status": t.requeue_exit_status if stopped else 0,
        "already_finished": tr.start >= t.steps,
        "skipped": int(tr.state.skipped),
        "resumed_from": tr.resumed_from,
        "wall_s": time.perf_counter() - t_start,
        "run_dir": str(tr.run_dir),
        "params": tr.model_params,
        "state": tr.state,
    }


def _already_finished(tr: Trainer, log: MetricsLogger) -> float:
    """Running a finished run again trains and writes nothing; it reports the logged result
    (and evaluates only when a kill came between the final checkpoint and its evaluation)."""
    where = "reaches" if tr.start == tr.cfg.train.steps else "is past"
    log.message(
        f"{tr.run_dir} is finished: its checkpoint at step {tr.start} {where} "
        f"train.steps={tr.cfg.train.steps}; nothing to train (raise train.steps to go on)"
    )
    tr.val = logged(tr.run_dir, tr.start, "val")
    if tr.val is None:
        tr.run_eval(log)
    return (logged(tr.run_dir, tr.start, "train") or {}).get("loss", math.nan)


def _train(tr: Trainer, flag: SignalFlag, log: MetricsLogger) -> tuple[float | None, str | None]:
    """The steps, then the final checkpoint and evaluation; returns (last loss, signal name)."""
    cfg, t = tr.cfg, tr.cfg.train
    rates = (
        t.batch_size * t.seq_len,
        train_flops_per_token(cfg.model, t.seq_len),
        t.peak_flops or measure_peak_flops(cfg.model.dtype),
    )
    if tr.resumed_from is not None:
        log.message(f"resumed from the checkpoint at step {tr.resumed_from} in {tr.ckpt.directory}")
    elif tr.warm_from is not None and flag.name is None:
        log.message(f"starting from the weights of {tr.warm_from}")
        tr.run_eval(log)  # step 0: the starting point's validation metrics
    loss, step, window = None, tr.start, Window(tr.start)
    try:
        while step < t.steps and flag.name is None:
            _profile(tr, step)
            host_batch = next(tr.batches)
            tr.drawn += 1
            batch = tr.put(host_batch)  # global arrays from this process's rows
            stats = _layer_activations(tr, batch, step + 1)  # before the step donates params
            tr.state, metrics = tr.step_fn(tr.state, batch)
            step += 1
            window.add(step, {**metrics, **stats})
            if step == tr.start + 1:
                window.exclude_compile()
            evaluating = bool(t.eval_every) and step % t.eval_every == 0 and step < t.steps
            saving = bool(t.ckpt_every) and step % t.ckpt_every == 0 and step < t.steps
            if step % t.log_every == 0 or step == t.steps or evaluating or saving or flag.name:
                loss = flush(window, log, tr.loss.derived_metrics, rates)
                if evaluating:
                    tr.run_eval(log)
                if saving or evaluating:
                    tr.calibrate_batchnorm(log)  # every checkpoint: its own step's statistics
                    tr.save(tr.val["loss"] if evaluating else None)
                window = Window(step)
        if window.pending:
            loss = flush(window, log, tr.loss.derived_metrics, rates)
    except TrainingDiverged:
        raise
    except Exception:
        _save_before_failing(tr, window, log, rates)
        raise
    return loss, _finish(tr, flag, log, step)


def _layer_activations(tr: Trainer, batch: dict[str, jax.Array], step: int) -> dict[str, Any]:
    """`train.layer_stats`' activation RMS of `batch` under the params step `step` starts
    from, on the run's first step (compiled while that step is untimed), every log_every-th
    step and the last; {} otherwise."""
    t = tr.cfg.train
    if tr.act_stats is None or not (
        step == tr.start + 1 or step % t.log_every == 0 or step == t.steps
    ):
        return {}
    return tr.act_stats(tr.state.params, tr.state.frozen, batch)


def _finish(tr: Trainer, flag: SignalFlag, log: MetricsLogger, step: int) -> str | None:
    """The final checkpoint, on disk before the final evaluation; returns the signal name."""
    stopped = flag.name
    if step == tr.start:  # a signal before the first step: nothing new to save
        on_disk = f"step {step} is on disk" if tr.resumed_from is not None else "nothing trained"
        log.message(f"{stopped} received before the first step: no checkpoint needed ({on_disk})")
        return stopped
    tr.calibrate_batchnorm(log)
    tr.save()
    tr.ckpt.wait()
    if stopped:
        log.message(f"{stopped} received: saved a checkpoint at step {step} and stopping")
    else:
        tr.run_eval(log)
    return stopped


def _save_before_failing(tr: Trainer, window: Window, log: MetricsLogger, rates) -> None:
    """After an unexpected error in the loop (evaluation, data, logging), saves the steps since
    the last checkpoint if their metrics are finite and the data stream matches the state."""
    try:
        if window.pending:
            flush(window, log, tr.loss.derived_metrics, rates)
        step = int(tr.state.step)
        if tr.drawn != step:
            log.message(f"error before step {tr.drawn} finished: step {step} is not saved")
        elif tr.save():
            tr.ckpt.wait()
            log.message(f"error after step {step}: saved a checkpoint of it before stopping")
    except Exception as err:  # the state itself may be what failed
        log.message(f"error: no checkpoint could be saved after it ({err!r:.200})")
