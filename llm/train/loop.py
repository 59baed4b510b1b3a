"""The training driver: `train(cfg)` runs, evaluates, checkpoints and resumes a run.

    result = train(load_config("configs/default.yaml"))

Order of business each step: next batch -> jitted step (asynchronous dispatch) -> every
`log_every` steps the pending metrics are fetched, checked and written. Nothing else forces
the host to wait for the device, so Python overhead overlaps with compute.

Failure handling:
  * A non-finite loss or gradient aborts with `TrainingDiverged` naming the step, the loss,
    the gradient norm and the parameters whose gradients are non-finite. Metrics are always
    checked before a checkpoint is written, so a diverged state never replaces a good one.
  * With `train.spike_skip`, spiking steps are skipped inside the step (see step.py) and
    counted; the count is logged and reported at the end.
  * SIGTERM / SIGINT set a flag; the loop finishes the current step, writes a checkpoint,
    waits for it to reach the disk and returns (`result["stopped"]` is the signal name).
    A second SIGINT interrupts at once.
  * On start the newest good checkpoint in `run_dir` is restored (`train.resume`), together
    with the data iterator's position, so the continued run matches an uninterrupted one.
    Otherwise `train.init_from` names weights to start from (a run, an `llm convert` or a
    Hugging Face directory, `llm.checkpoint.load_model`): they are restored straight into
    their shards, the optimiser state is fresh, and step 0 is evaluated so the starting
    point is on record. A resumed warm start continues from its own checkpoints.

What is trained and how it is scored are arguments, not code paths: `loss` (a
`llm.train.losses.Loss`, default: the one `cfg.loss` names) and `trainable` (a
`llm.train.trainable.Trainable`, default: `train.freeze`).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from llm.checkpoint import Checkpointer, load_model
from llm.config import Config, check, save_config, to_dict
from llm.data import make_batches
from llm.data.device import to_device
from llm.data.objectives import mlm_mask_id
from llm.model import logical_axes
from llm.model.accounting import train_flops_per_token
from llm.sharding import make_mesh, with_activation_sharding
from llm.sharding import rules as R
from llm.sharding.distributed import initialize
from llm.sharding.init import batch_shardings, make_plan
from llm.tokenizers import load_tokenizer
from llm.train.build import init_train_state, state_layout
from llm.train.losses import Loss, check_batch_leaves, make_loss
from llm.train.metrics import MetricsLogger, measure_peak_flops
from llm.train.optim import make_schedule, param_paths
from llm.train.state import TrainState
from llm.train.step import make_train_step
from llm.train.trainable import Trainable, model_params
from llm.train.warm_start import warm_start_config

Batches = Iterator[dict[str, np.ndarray]]


class TrainingDiverged(RuntimeError):
    """The loss or gradients became NaN/Inf; the last good checkpoint is untouched."""


def default_batches(cfg: Config, split: str, tokenizer: Any) -> Batches:
    # this process's rows of every global batch: all processes together make the batch
    return make_batches(
        cfg, split, tokenizer, process_index=jax.process_index(), process_count=jax.process_count()
    )


class _Silent:
    """The logger of processes other than 0: every process trains, only process 0 logs."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    message = advance = log

    def close(self) -> None:
        pass


class _SignalFlag:
    """Records SIGTERM/SIGINT instead of dying; restores the old handlers on exit."""

    def __init__(self) -> None:
        self.name: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _SignalFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.name == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _diverged_message(step: int, m: dict[str, Any]) -> str:
    bad = [p for p, ok in zip(*_flat_paths(m["grad_finite"]), strict=True) if not ok]
    where = ", ".join(bad[:8]) + (f" (+{len(bad) - 8} more)" if len(bad) > 8 else "")
    return (
        f"non-finite training at step {step}: loss={m['loss']}, grad_norm={m['grad_norm']}, "
        f"param_norm={m['param_norm']}, lr={m['lr']}; non-finite gradients in: {where or 'none'}. "
        "No checkpoint was written after the last good one."
    )


def _flat_paths(tree: Any) -> tuple[list[str], list[Any]]:
    return jax.tree.leaves(param_paths(tree)), jax.tree.leaves(tree)


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
        cfg = warm_start_config(cfg)  # init_from: the source's architecture and tokenizer
        self.cfg, t = cfg, cfg.train
        self.run_dir = Path(t.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if jax.process_index() == 0:
            save_config(cfg, self.run_dir / "config.yaml")
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.data.tokenizer)
        self.loss = loss if loss is not None else make_loss(cfg)
        _check_data(cfg, self.tokenizer, self.loss)
        self.plan = make_plan(cfg, make_mesh(cfg.mesh))  # fails here, before any compile
        self.schedule = make_schedule(cfg.optim, t.steps)
        self.layout = state_layout(cfg, self.plan, trainable or Trainable(freeze=t.freeze))
        self.batch_sharding = batch_shardings(self.plan, self.loss.batch_axes)
        self.step_fn = make_train_step(
            cfg,
            with_activation_sharding(self.loss, self.plan.mesh, self.plan.rules),
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
        self.resumed_from = self._resume() if t.resume else None
        self.warm_from: str | None = None
        if self.resumed_from is None:
            self.state = init_train_state(cfg, self.layout, self._initial_weights())
        self.start = int(self.state.step)
        self.val: dict[str, float] | None = None
        self.profiling = False

    def _resume(self) -> int | None:
        restored = self.ckpt.restore(self.layout.abstract_sharded())
        if restored is None:
            return None
        self.state: TrainState = restored.state
        self.batches.set_state(restored.data_state)
        return restored.step

    def _initial_weights(self) -> Any:
        """None (fresh init) or the `train.init_from` model, restored into its shards."""
        t = self.cfg.train
        if t.init_from is None:
            return None
        specs = R.param_specs(self.plan.rules, logical_axes(self.cfg.model))
        loaded = load_model(t.init_from, t.init_step, shardings=R.named(self.plan.mesh, specs))
        self.warm_from = f"{loaded.path} ({loaded.layout}, step {loaded.step})"
        return loaded.params

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

    def save(self, val_loss: float | None = None) -> None:
        self.ckpt.save(
            self.state, data_state=self.batches.get_state(), meta=self.meta, val_loss=val_loss
        )

    def run_eval(self, log: MetricsLogger) -> dict[str, float]:
        """The loss's own validation metrics (perplexity and bpb for language modelling)."""
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


def _check_data(cfg: Config, tokenizer: Any, loss: Loss) -> None:
    """Data that would train to NaN or to nothing is refused before the first step."""
    check(
        cfg.data.objective != "mlm" or loss.name != "causal_lm",
        "data.objective",
        "'mlm' makes masked-token batches, but loss.name='causal_lm' trains a causal decoder "
        "to predict the next token; use data.objective=causal with this loss",
    )
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ValueError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
            f"vocabulary ({tokenizer.vocab_size} ids from data.tokenizer={cfg.data.tokenizer!r})"
        )
    if cfg.data.objective == "mlm" and mlm_mask_id(tokenizer) >= cfg.model.vocab_size:
        raise ValueError(
            f"data.objective=mlm writes mask id {mlm_mask_id(tokenizer)} (data.tokenizer="
            f"{cfg.data.tokenizer!r} has no [MASK] below it), outside model.vocab_size="
            f"{cfg.model.vocab_size}: raise model.vocab_size or use a tokenizer with a mask token"
        )


class _Window:
    """Metrics of the steps since the last flush, with the wall time they took."""

    def __init__(self, step: int) -> None:
        self.pending: list[tuple[int, dict[str, Any]]] = []
        self.t0 = time.perf_counter()
        self.first_step = step
        self.untimed = 0  # leading steps excluded from the step time (the compiling one)

    def exclude_compile(self) -> None:
        """Called after the run's first step: its time is compilation, not a step."""
        jax.block_until_ready(self.pending[-1][1])
        self.untimed, self.t0 = len(self.pending), time.perf_counter()

    def add(self, step: int, metrics: dict[str, Any]) -> None:
        self.pending.append((step, metrics))


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
    """
    initialize(cfg.mesh)  # multi-host jobs join here; a no-op for one process
    trainer = Trainer(
        cfg,
        train_batches=train_batches,
        val_batches=val_batches,
        tokenizer=tokenizer,
        loss=loss,
        trainable=trainable,
    )
    try:
        return _run(trainer)
    finally:
        trainer.ckpt.wait()
        trainer.ckpt.close()


def _flush(tr: Trainer, window: _Window, log: MetricsLogger, rates: tuple[float, float]) -> float:
    """Fetches pending metrics, aborts on non-finite ones, logs every step; returns last loss."""
    fetched = jax.device_get([m for _, m in window.pending])
    elapsed = time.perf_counter() - window.t0
    n = len(fetched)
    step_s = elapsed / max(n - window.untimed, 1)
    tokens_per_s = tr.cfg.train.batch_size * tr.cfg.train.seq_len / step_s
    flops_per_tok, peak = rates
    for (step, _), m in zip(window.pending, fetched, strict=True):
        if not bool(m["finite"]):
            raise TrainingDiverged(_diverged_message(step, m))
        record = {k: v for k, v in m.items() if k not in ("finite", "grad_finite")}
        record.update(tr.loss.derived_metrics(record))
        record.update(step_s=step_s, tokens_per_s=tokens_per_s)
        record["mfu"] = flops_per_tok * tokens_per_s / peak
        log.log(step, record)
    last = fetched[-1]
    log.advance(n, float(last["loss"]))
    return float(last["loss"])


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


def _run(tr: Trainer) -> dict[str, Any]:
    cfg, t = tr.cfg, tr.cfg.train
    rates = (
        train_flops_per_token(cfg.model, t.seq_len),
        t.peak_flops or measure_peak_flops(cfg.model.dtype),
    )
    log = (
        MetricsLogger(tr.run_dir, cfg, total_steps=t.steps, start_step=tr.start)
        if jax.process_index() == 0
        else _Silent()
    )
    t_start, loss, step = time.perf_counter(), None, tr.start
    if tr.resumed_from is not None:
        log.message(f"resumed from the checkpoint at step {tr.resumed_from} in {tr.ckpt.directory}")
    elif tr.warm_from is not None:
        log.message(f"starting from the weights of {tr.warm_from}")
        tr.run_eval(log)  # step 0: the starting point's validation metrics
    try:
        with _SignalFlag() as flag:
            window = _Window(step)
            while step < t.steps and flag.name is None:
                _profile(tr, step)
                batch = tr.put(next(tr.batches))  # global arrays from local rows
                tr.state, metrics = tr.step_fn(tr.state, batch)
                step += 1
                window.add(step, metrics)
                if step == tr.start + 1:
                    window.exclude_compile()
                evaluating = bool(t.eval_every) and step % t.eval_every == 0 and step < t.steps
                saving = bool(t.ckpt_every) and step % t.ckpt_every == 0 and step < t.steps
                if step % t.log_every == 0 or step == t.steps or evaluating or saving or flag.name:
                    loss = _flush(tr, window, log, rates)
                    if evaluating:
                        tr.run_eval(log)
                    if saving or evaluating:
                        tr.save(tr.val["loss"] if evaluating else None)
                    window = _Window(step)
            stopped = flag.name
        if window.pending:
            loss = _flush(tr, window, log, rates)
        if stopped:
            log.message(f"{stopped} received: saving a checkpoint at step {step} and stopping")
        else:
            tr.run_eval(log)
        tr.save(None if stopped else tr.val["loss"])
        tr.ckpt.wait()
    finally:
        log.close()
        _profile(tr, step, end=True)
    return {
        "step": step,
        "loss": loss,
        "val": tr.val,
        "stopped": stopped,
        "skipped": int(tr.state.skipped),
        "resumed_from": tr.resumed_from,
        "wall_s": time.perf_counter() - t_start,
        "run_dir": str(tr.run_dir),
        "params": tr.model_params,
        "state": tr.state,
    }
