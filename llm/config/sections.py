"""Config sections beside the model: optimiser, training loop, evaluation.

Each section validates itself in `__post_init__`; `Config` checks what spans sections.
Later features add fields to the section they belong to, each with a one-line comment.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from llm.config.base import check, config_class

OptimizerName = Literal["adamw", "adafactor", "lion", "sgd", "muon"]
ScheduleName = Literal["constant", "cosine", "linear", "wsd"]


@config_class
class OptimConfig:
    """Optimiser and learning-rate schedule."""

    name: OptimizerName = "adamw"  # update rule
    lr: float = 3e-4  # peak learning rate
    weight_decay: float = 0.1  # decoupled weight decay (AdamW/Lion), masked off norms and biases
    b1: float = 0.9  # first-moment decay (Adam/Lion) or momentum (SGD)
    b2: float = 0.95  # second-moment decay
    eps: float = 1e-8  # Adam denominator epsilon
    grad_clip: float | None = 1.0  # global-norm clip threshold; null disables clipping
    schedule: ScheduleName = "cosine"  # learning-rate shape after warmup
    warmup_steps: int = 100  # linear warmup length in steps
    min_lr_ratio: float = 0.1  # final learning rate as a fraction of the peak
    decay_fraction: float = 0.2  # wsd: fraction of all steps spent in the final linear decay
    no_decay_patterns: tuple[str, ...] = ("norm", "bias")  # regexes on param paths never decayed
    decay_min_ndim: int = 2  # params with fewer dims (layer-stack axis not counted) never decayed
    nesterov: bool = False  # sgd: Nesterov momentum
    muon_adam_lr: float | None = None  # muon: AdamW lr of non-matrix params; null = lr

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        check(self.weight_decay >= 0, "weight_decay", "must be non-negative")
        check(0.0 <= self.b1 < 1.0, "b1", "must be in [0, 1)")
        check(0.0 <= self.b2 < 1.0, "b2", "must be in [0, 1)")
        check(self.eps > 0, "eps", "must be positive")
        check(self.grad_clip is None or self.grad_clip > 0, "grad_clip", "must be positive")
        check(self.warmup_steps >= 0, "warmup_steps", "must be non-negative")
        check(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", "must be in [0, 1]")
        check(0.0 < self.decay_fraction <= 1.0, "decay_fraction", "must be in (0, 1]")
        check(self.decay_min_ndim >= 0, "decay_min_ndim", "must be non-negative")
        for pattern in self.no_decay_patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                check(False, "no_decay_patterns", f"{pattern!r} is not a regex: {err}")
        check(
            self.muon_adam_lr is None or self.muon_adam_lr > 0, "muon_adam_lr", "must be positive"
        )


QatFormat = Literal["none", "int8", "int4", "uint4", "nf4"]
QAT_BITS = {"int8": (8,), "int4": (2, 3, 4), "uint4": (2, 3, 4), "nf4": (4,)}  # as code_range's


@config_class
class QatConfig:
    """Quantization-aware training (llm/compress/qat.py): the forward sees the targets
    rounded to this grid (straight-through gradients), so RTN of the result loses nothing."""

    fmt: QatFormat = "none"  # weight format the run trains for (llm/ops/quantized.py); none = off
    bits: int | None = None  # bits per code (int8: 8; int4/uint4: 2-4; nf4: 4); null = widest
    group: int = 128  # input features per scale; 0 = one scale per output channel
    targets: str = r"^blocks/(attn|mlp)/\w+/w$"  # regex on weight paths fake-quantized

    def __post_init__(self) -> None:
        check(self.fmt != "none" or self.bits is None, "bits", "is set but qat.fmt is none")
        if self.fmt != "none" and self.bits is not None:
            allowed = QAT_BITS[self.fmt]
            check(self.bits in allowed, "bits", f"{self.fmt} takes bits {allowed}, not {self.bits}")
        check(self.group >= 0, "group", "must be non-negative (0 = per output channel)")
        try:
            re.compile(self.targets)
        except re.error as err:
            check(False, "targets", f"{self.targets!r} is not a regex: {err}")


@config_class
class TrainConfig:
    """The training loop: batch shape, length, seeds, logging and checkpoint cadence."""

    run_dir: str = "runs/default"  # where checkpoints, metrics and the resolved config go
    steps: int = 1000  # optimiser steps to run
    batch_size: int = 16  # sequences per optimiser step (global, across devices)
    seq_len: int = 128  # tokens per sequence
    grad_accum: int = 1  # micro-batches per step; batch_size must divide evenly
    seed: int = 0  # seed of parameter init and dropout
    log_every: int = 10  # steps between metric lines
    eval_every: int = 200  # steps between validation passes (0 disables)
    ckpt_every: int = 500  # steps between checkpoints (the last step is always saved)
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    keep_best: int = 1  # checkpoints with the lowest validation loss also kept (0 = none)
    async_checkpointing: bool = True  # write checkpoints in a background thread
    loss_scale_init: float = 32768.0  # float16 only: initial dynamic loss scale
    loss_scale_period: int = 2000  # float16 only: finite steps before the loss scale doubles
    spike_skip: bool = False  # skip updates whose loss or grad norm spikes (counted, not fatal)
    spike_window: int = 100  # steps in the rolling mean/std that spikes are judged against
    spike_k: float = 6.0  # a spike is a value above mean + spike_k * std of the window
    peak_flops: float | None = None  # device peak FLOP/s for MFU; null = measure a matmul
    progress_bar: bool = True  # tqdm progress bar on stderr
    tensorboard: bool = True  # write TensorBoard event files into run_dir/tb
    wandb_project: str | None = None  # log to Weights & Biases under this project (if installed)
    profile_steps: tuple[int, ...] = ()  # [first, last] step of a jax.profiler trace; () = off
    resume: bool = True  # continue from the newest good checkpoint in run_dir
    overwrite: bool = False  # start over in a run_dir holding checkpoints: deletes them first
    requeue_exit_status: int = 75  # exit status of a run stopped by a signal (75: EX_TEMPFAIL)
    init_from: str | None = None  # start from these weights: a run, `llm convert` or HF directory
    init_step: int | None = None  # with init_from a run: its checkpoint step; null = newest
    freeze: tuple[str, ...] = ()  # regexes on model param paths ("blocks/attn/q/w") kept frozen
    keep_sparsity: bool = False  # keep init_from's exact zeros (`llm prune`): a frozen mask
    qat: QatConfig = dataclasses.field(default_factory=QatConfig)  # quantization-aware training
    # truncated BPTT: rnn/lstm/gru carry each stream's recurrent state from step to step in the
    # TrainState (gradients stop at the batch boundary); needs data.order=streams
    tbptt: bool = False
    # per-layer gradient norms (every step) and activation RMS (each log window's last step)
    # in metrics.jsonl: layer{i:02d}/grad_norm, embed/act_rms, layer{i:02d}/act_rms
    layer_stats: bool = False

    def __post_init__(self) -> None:
        for key in (
            "steps",
            "batch_size",
            "seq_len",
            "grad_accum",
            "log_every",
            "keep_checkpoints",
        ):
            check(getattr(self, key) > 0, key, f"must be positive, got {getattr(self, key)}")
        for key in ("eval_every", "ckpt_every", "keep_best"):
            check(getattr(self, key) >= 0, key, "must be non-negative")
        check(
            self.init_step is None or self.init_from is not None,
            "init_step",
            "needs init_from (the run directory whose step it names)",
        )
        check(self.init_step is None or self.init_step >= 0, "init_step", "must be >= 0")
        check(
            not self.keep_sparsity or self.init_from is not None,
            "keep_sparsity",
            "needs init_from (the pruned model whose zeros it keeps, from `llm prune`)",
        )
        for pattern in self.freeze:
            try:
                re.compile(pattern)
            except re.error as err:
                check(False, "freeze", f"{pattern!r} is not a regex: {err}")
        check(0 <= self.requeue_exit_status <= 255, "requeue_exit_status", "must be in [0, 255]")
        check(self.loss_scale_init > 0, "loss_scale_init", "must be positive")
        check(self.loss_scale_period > 0, "loss_scale_period", "must be positive")
        check(self.spike_window >= 2, "spike_window", "must be at least 2")
        check(self.spike_k > 0, "spike_k", "must be positive")
        check(self.peak_flops is None or self.peak_flops > 0, "peak_flops", "must be positive")
        check(
            len(self.profile_steps) in (0, 2)
            and (not self.profile_steps or 0 <= self.profile_steps[0] < self.profile_steps[1]),
            "profile_steps",
            f"must be [] or [first, last] with first < last, got {list(self.profile_steps)}",
        )
        check(
            self.batch_size % self.grad_accum == 0,
            "grad_accum",
            f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}",
        )


@config_class
class EvalConfig:
    """Evaluation and sampling after (or during) training."""

    batches: int = 20  # validation batches per evaluation
    sample_tokens: int = 200  # tokens to sample after training
    temperature: float = 0.8  # sampling temperature (0 = greedy)
    prompt: str = ""  # text the post-training sample starts from
    samples: int = 1  # samples printed after training / by eval.py
    seed: int = 0  # seed of sampling
    top_k: int | None = None  # sample only among the k most likely tokens; null = all

    def __post_init__(self) -> None:
        check(self.batches > 0, "batches", "must be positive")
        check(self.sample_tokens >= 0, "sample_tokens", "must be non-negative")
        check(self.temperature >= 0, "temperature", "must be non-negative")
        check(self.samples >= 0, "samples", "must be non-negative")
        check(self.top_k is None or self.top_k > 0, "top_k", "must be positive or null")
