"""Checkpoints that survive crashes: orbax, asynchronous, atomic, checksummed, checked on restore.

A checkpoint is one orbax step directory `run_dir/checkpoints/<step>/` with these items:
  state    the TrainState pytree (step, params, frozen, optimiser state, RNG, loss scale, spike
           stats); any dataclass with `step`, `to_dict()` and `from_dict()` works
  data     the data iterator's JSON state, so the token stream continues exactly
  meta     the resolved config, the tokenizer reference and the step's metrics
  metrics  the validation loss, when the save had one (orbax's own item; what BestN reads)
and `checksums.json`, the SHA-256 of every file (llm/checkpoint/integrity.py).

Why it is safe:
  * Atomic: orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames the directory when
    every item is written (plus `commit_success.txt`), so an interrupted save is never listed
    as a checkpoint. The checksum manifest is written inside that temporary directory, so it
    commits with the step.
  * Asynchronous: `save` returns once arrays are copied to host memory; writing continues
    in a background thread while training goes on (`wait` blocks until it is on disk).
  * Never stale, never non-finite: `save` refuses a state holding a NaN/Inf (naming the
    leaves), a data state whose position (`next_batch`) is not the state's step, and a step
    already on disk that this Checkpointer did not write or restore itself (another writer in
    the same directory); a step it did write or restore holds this very state, so it is kept.
  * Retention: the newest `keep_checkpoints` plus the `keep_best` with the lowest validation
    loss (orbax preservation policies `LatestN` + `BestN`). The loss is written into the step
    (orbax writes its `metrics` item only when `best_fn` is set, so it is), so the best step
    is still known, and kept, after a restart.
  * Restore: the newest step is tried first; a checkpoint that cannot be read (truncated or
    changed files, a data state at another step than the state) is reported on stderr and the
    next older one tried. `Restored.unreadable` lists the steps passed over, so the trainer can
    move them aside (`set_aside`) before it writes those step numbers again.
  * Before restoring, every array's shape and dtype in the checkpoint is compared with the
    state the current config builds; a mismatch raises `CheckpointMismatch` naming the path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from llm.checkpoint.integrity import (
    MANIFEST,
    META_KEY,
    ChecksummedRename,
    CorruptCheckpoint,
    verify,
)
from llm.typing import PyTree

STATE, DATA, META = "state", "data", "meta"  # the items of one step directory
CHECKPOINTS = "checkpoints"  # run_dir/checkpoints/<step>/
UNREADABLE = "unreadable-checkpoints"  # run_dir/unreadable-checkpoints/<step>: set aside
POSITION = "next_batch"  # a data state's count of batches drawn (llm.data.pipeline)


class _SavesWithoutLoss(logging.Filter):
    """orbax warns at each save without metrics once `best_fn` is set; most of ours have none
    (only saves after an evaluation carry a loss), so that warning says nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_SavesWithoutLoss())


class CheckpointMismatch(ValueError):
    """The checkpoint's arrays do not match the state built from the config."""


class NoUsableCheckpoint(RuntimeError):
    """Checkpoints exist in the run directory but none of them could be restored."""


class CheckpointExists(FileExistsError):
    """The step is on disk already and was not written (or restored) by this Checkpointer."""


class NonFiniteState(RuntimeError):
    """A state holding NaN or Inf was offered for saving; nothing was written."""


@dataclasses.dataclass
class Restored:
    """What `Checkpointer.restore` returns."""

    step: int
    state: Any  # the same type as the `like` given to restore (a TrainState)
    data_state: dict[str, Any]
    meta: dict[str, Any]
    unreadable: list[int] = dataclasses.field(default_factory=list)  # newer steps passed over


def path_name(path: tuple[Any, ...]) -> str:
    """Dotted name of a pytree key path, as orbax names array metadata ("params.blocks.w")."""
    parts = [getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path]
    return ".".join(str(p) for p in parts)


def abstract_of(tree: PyTree) -> PyTree:
    """Shape/dtype/sharding skeleton of concrete arrays (what restore fills in)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def check_compatible(
    expected: PyTree, found: dict[str, tuple[tuple[int, ...], str]], where: Path, advice: str
) -> None:
    """Raises CheckpointMismatch naming `where`, every path whose presence, shape or dtype
    differs, and `advice` (what to change)."""
    want = {
        path_name(p): (tuple(x.shape), str(x.dtype))
        for p, x in jax.tree_util.tree_flatten_with_path(expected)[0]
    }
    problems = [f"{k}: missing from checkpoint" for k in sorted(want.keys() - found.keys())]
    problems += [
        f"{k}: in checkpoint but not in the model" for k in sorted(found.keys() - want.keys())
    ]
    for k in sorted(want.keys() & found.keys()):
        if want[k] != found[k]:
            problems.append(
                f"{k}: checkpoint has shape {found[k][0]} {found[k][1]}, "
                f"config expects {want[k][0]} {want[k][1]}"
            )
    if problems:
        raise CheckpointMismatch(
            f"{where}: checkpoint does not match the config:\n  "
            + "\n  ".join(problems)
            + f"\n{advice}"
        )


RUN_ADVICE = (
    "the config describes another model than this run saved: resume with the run's own "
    "config.yaml, or choose another train.run_dir"
)


class Checkpointer:
    """Saves and restores train checkpoints under `run_dir/checkpoints`."""

    def __init__(
        self, run_dir: str | Path, *, keep: int, keep_best: int = 1, async_save: bool = True
    ) -> None:
        policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=keep)]
        if keep_best:
            policies.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=_val_loss,
                    reverse=True,  # BestN keeps the largest; reversed, the lowest loss
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            best_fn=_val_loss if keep_best else None,  # only then does orbax write metrics
            best_mode="min",
            enable_async_checkpointing=async_save,
            temporary_path_class=ChecksummedRename,
            create=True,
        )
        self.run_dir = Path(run_dir).absolute()
        self.directory = self.run_dir / CHECKPOINTS
        self._set_aside_unlistable()
        handlers = {
            STATE: ocp.StandardCheckpointHandler(),
            DATA: ocp.JsonCheckpointHandler(),
            META: ocp.JsonCheckpointHandler(),
        }  # registered up front so a fresh process can read metadata before any restore
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )
        self._mine: set[int] = set()  # steps this object saved or restored: their state is known

    def steps(self) -> list[int]:
        """The committed steps on disk (after any save in flight has finished)."""
        self.wait()  # a reload during a save would drop that step from orbax's retention list
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(
        self,
        state: Any,
        *,
        data_state: dict[str, Any],
        meta: dict[str, Any],
        val_loss: float | None = None,
    ) -> bool:
        """Starts writing a checkpoint of `state` (returns once arrays are on the host).

        Returns False, writing nothing, when this step is on disk from this very object (saved
        by it, or restored by it and not stepped since: the same state). Raises rather than
        write a non-finite state, a data state at another step, or over a step it did not write.
        """
        step = int(jax.device_get(state.step))
        on_disk = self._manager.all_steps()  # found at start-up, plus every save since
        if step in self._mine and step in on_disk:
            return False
        if step in on_disk:
            raise CheckpointExists(
                f"{self.directory / str(step)} already exists and was not written by this run: "
                f"another process may be training in {self.run_dir}. Refusing both to keep it "
                "as this run's state and to replace it; stop the other run, or start over with "
                "train.overwrite=true"
            )
        _check_position(step, data_state)
        _check_finite(step, state.to_dict())
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state.to_dict()),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave({**meta, META_KEY: MANIFEST}),
        )
        metrics = None if val_loss is None else {"val_loss": float(val_loss)}
        self._manager.save(step, args=args, metrics=metrics, force=True)
        self._mine.add(step)
        return True

    def wait(self) -> None:
        """Blocks until every started save is complete on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def restore(self, like: Any, step: int | None = None) -> Restored | None:
        """The newest readable checkpoint restored into `like`'s structure, or None if none.

        A shape/dtype mismatch is a configuration error and is raised at once; any other
        failure to read or verify a step is reported and the next older step tried. With
        `step`, only that checkpoint is tried.
        """
        steps = self.steps()
        if step is not None:
            if step not in steps:
                raise FileNotFoundError(
                    f"no checkpoint for step {step} in {self.directory}: {steps}"
                )
            steps = [step]
        if not steps:
            return None
        expected = abstract_of(like.to_dict())
        errors, unreadable = [], []
        for step in reversed(steps):
            try:
                verify(self.directory / str(step))
                check_compatible(expected, self._array_metadata(step), self.directory / str(step),
                                 RUN_ADVICE)  # fmt: skip
                restored = self._restore_step(step, expected, type(like))
            except CheckpointMismatch:
                raise
            except Exception as err:  # unreadable: report and fall back to an older one
                message = f"checkpoint {self.directory / str(step)} is unreadable ({err!r:.300})"
                print(f"warning: {message}; trying an older one", file=sys.stderr)
                errors.append(message)
                unreadable.append(step)
                continue
            self._mine.add(step)
            restored.unreadable = unreadable
            return restored
        raise NoUsableCheckpoint(
            "no checkpoint could be restored:\n  "
            + "\n  ".join(errors)
            + f"\nMove {self.directory} aside, or start over with train.overwrite=true"
        )

    def set_aside(self, steps: list[int]) -> list[Path]:
        """Moves unreadable steps to run_dir/unreadable-checkpoints/ (kept for inspection), so
        their step numbers are free to be written again; returns where they went."""
        moved = self._move_aside(steps)
        self._manager.reload()
        return moved

    def _move_aside(self, steps: list[int]) -> list[Path]:
        moved = []
        if jax.process_index() == 0:
            for step in steps:
                dest, n = self.run_dir / UNREADABLE / str(step), 1
                while dest.exists():
                    dest, n = self.run_dir / UNREADABLE / f"{step}.{n}", n + 1
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(self.directory / str(step), dest)
                moved.append(dest)
        _sync("llm_checkpoint_set_aside")
        return moved

    def _set_aside_unlistable(self) -> None:
        """orbax reads every step's `metrics` item when it opens a directory and fails on one
        that does not parse, which would lock the whole run out; such a step is corrupt (its
        checksums cannot match), so it is set aside before orbax looks."""
        bad = []
        for metrics in sorted(self.directory.glob("*/metrics/metrics")):
            try:
                json.loads(metrics.read_text())
            except (OSError, ValueError):
                if metrics.parents[1].name.isdigit() and jax.process_index() == 0:
                    bad.append(int(metrics.parents[1].name))
        for step, dest in zip(bad, self._move_aside(bad), strict=True):  # all processes sync
            print(f"warning: checkpoint {self.directory / str(step)} is unreadable (its metrics "
                  f"do not parse); moved to {dest}", file=sys.stderr)  # fmt: skip

    def delete_all(self) -> None:
        """Deletes every checkpoint step (starting a run over, `train.overwrite`)."""
        for step in self.steps():
            self._manager.delete(step)
        self._mine.clear()

    def _array_metadata(self, step: int) -> dict[str, tuple[tuple[int, ...], str]]:
        tree = self._manager.item_metadata(step)["state"]
        if tree is None:
            raise FileNotFoundError(f"step {step} has no readable 'state' metadata")
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {path_name(p): (tuple(m.shape), str(m.dtype)) for p, m in leaves}

    def _restore_step(self, step: int, expected: PyTree, kind: type) -> Restored:
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(expected),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        )
        out = self._manager.restore(step, args=args)
        _check_position(step, out[DATA], restoring=True)
        state = kind.from_dict(dict(out[STATE]))
        meta = {k: v for k, v in out[META].items() if k != META_KEY}
        return Restored(step=step, state=state, data_state=out[DATA], meta=meta)


def _val_loss(metrics: dict[str, float]) -> float:
    return metrics["val_loss"]


def _check_position(step: int, data_state: dict[str, Any], restoring: bool = False) -> None:
    """A data state that counts its batches must have drawn one per step taken."""
    position = data_state.get(POSITION)
    if position is None or position == step:
        return
    message = (
        f"the data state is at batch {position} but the train state at step {step}: "
        "the stream would not continue where training stopped"
    )
    raise CorruptCheckpoint(message) if restoring else ValueError(f"refusing to save: {message}")


@jax.jit
def _leaf_finite(tree: PyTree) -> PyTree:
    return jax.tree.map(
        lambda x: jnp.isfinite(x).all() if jnp.issubdtype(x.dtype, jnp.inexact) else True, tree
    )


def _check_finite(step: int, tree: PyTree) -> None:
    """Raises NonFiniteState naming the leaves that hold NaN or Inf (one device pass)."""
    flags = jax.device_get(_leaf_finite(tree))
    flat = jax.tree_util.tree_flatten_with_path(flags)[0]
    bad = [path_name(p) for p, ok in flat if not ok]
    if bad:
        where = ", ".join(bad[:8]) + (f" (+{len(bad) - 8} more)" if len(bad) > 8 else "")
        raise NonFiniteState(f"refusing to save step {step}: non-finite values in {where}")


def _sync(name: str) -> None:
    """All processes wait here (multi-host runs); a no-op for one process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
