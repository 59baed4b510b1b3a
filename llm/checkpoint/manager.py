"""Checkpoints that survive crashes: orbax, asynchronous, atomic, checked before restoring.

A checkpoint is one orbax step directory `run_dir/checkpoints/<step>/` with three items:
  state  the TrainState pytree (step, params, frozen, optimiser state, RNG, loss scale, spike
         stats); any dataclass with `step`, `to_dict()` and `from_dict()` works
  data   the data iterator's JSON state, so the token stream continues exactly
  meta   the resolved config, the tokenizer reference and the step's metrics

Why it is safe:
  * Atomic: orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames the directory when
    every item is written (plus `commit_success.txt`), so an interrupted save is never listed
    as a checkpoint.
  * Asynchronous: `save` returns once arrays are copied to host memory; writing continues
    in a background thread while training goes on (`wait` blocks until it is on disk).
  * Retention: the newest `keep_checkpoints` plus the `keep_best` with the lowest validation
    loss (orbax preservation policies `LatestN` + `BestN`).
  * Restore: the newest step is tried first; a checkpoint that cannot be read (truncated
    files, deleted items) is reported on stderr and the next older one is tried.
  * Before restoring, every array's shape and dtype in the checkpoint is compared with the
    state the current config builds; a mismatch raises `CheckpointMismatch` naming the path.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from llm.typing import PyTree

STATE, DATA, META = "state", "data", "meta"  # the items of one step directory
CHECKPOINTS = "checkpoints"  # run_dir/checkpoints/<step>/


class CheckpointMismatch(ValueError):
    """The checkpoint's arrays do not match the state built from the config."""


class NoUsableCheckpoint(RuntimeError):
    """Checkpoints exist in the run directory but none of them could be restored."""


@dataclasses.dataclass
class Restored:
    """What `Checkpointer.restore` returns."""

    step: int
    state: Any  # the same type as the `like` given to restore (a TrainState)
    data_state: dict[str, Any]
    meta: dict[str, Any]


def path_name(path: tuple[Any, ...]) -> str:
    """Dotted name of a pytree key path, as orbax names array metadata ("params.blocks.w")."""
    parts = [getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path]
    return ".".join(str(p) for p in parts)


def abstract_of(tree: PyTree) -> PyTree:
    """Shape/dtype/sharding skeleton of concrete arrays (what restore fills in)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def check_compatible(expected: PyTree, found: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """Raises CheckpointMismatch listing every path whose presence, shape or dtype differs."""
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
            "checkpoint does not match the config:\n  " + "\n  ".join(problems)
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
                    get_metric_fn=lambda m: m["val_loss"],
                    reverse=True,  # BestN keeps the largest; reversed, the lowest loss
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.directory = Path(run_dir).absolute() / CHECKPOINTS
        handlers = {
            STATE: ocp.StandardCheckpointHandler(),
            DATA: ocp.JsonCheckpointHandler(),
            META: ocp.JsonCheckpointHandler(),
        }  # registered up front so a fresh process can read metadata before any restore
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(
        self,
        state: Any,
        *,
        data_state: dict[str, Any],
        meta: dict[str, Any],
        val_loss: float | None = None,
    ) -> int:
        """Starts writing a checkpoint of `state` (returns once arrays are on the host)."""
        step = int(jax.device_get(state.step))
        if step in self._manager.all_steps():
            return step
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state.to_dict()),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta),
        )
        metrics = None if val_loss is None else {"val_loss": float(val_loss)}
        self._manager.save(step, args=args, metrics=metrics, force=True)
        return step

    def wait(self) -> None:
        """Blocks until every started save is complete on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def restore(self, like: Any, step: int | None = None) -> Restored | None:
        """The newest readable checkpoint restored into `like`'s structure, or None if none.

        A shape/dtype mismatch is a configuration error and is raised at once; any other
        failure to read a step is reported and the next older step tried. With `step`, only
        that checkpoint is tried.
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
        errors = []
        for step in reversed(steps):
            try:
                check_compatible(expected, self._array_metadata(step))
                return self._restore_step(step, expected, type(like))
            except CheckpointMismatch:
                raise
            except Exception as err:  # unreadable: report and fall back to an older one
                message = f"checkpoint {self.directory / str(step)} is unreadable ({err!r:.300})"
                print(f"warning: {message}; trying an older one", file=sys.stderr)
                errors.append(message)
        raise NoUsableCheckpoint("no checkpoint could be restored:\n  " + "\n  ".join(errors))

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
        state = kind.from_dict(dict(out[STATE]))
        return Restored(step=step, state=state, data_state=out["data"], meta=out["meta"])
