"""A trained reward model, loaded from its run directory and scoring text.

    rm = RewardModel.load("runs/rm_tiny")                    # newest verified checkpoint
    rm(["Who speaks?"], ["HAMLET. To be, or not to be"])     # np.ndarray [1] float32
    rm.score(prompts, completions, batch_size=32)

A reward-model run (`loss.name=reward`, llm/train/losses/reward.py) saves a TrainState whose
trees hold the decoder (component "model", or a frozen base plus a LoRA adapter) and the
scalar head "reward_head". Loading reads the decoder with the one model loader
(`llm.checkpoint.load_model`, which merges a trained adapter into the base weights, so a LoRA
reward model scores at the cost of a plain forward) and the head, from the same step, with
an orbax partial restore of that one component; optimiser moments are never read.

Scoring renders each (prompt, completion) exactly as training rendered a side of a pair: the
prompt as the user turn (or a list of messages ending before the answer), the completion as
the assistant turn, through the run's tokenizer and chat template
(`llm.data.preference.render_completion`, what `data.format=preference` trains on); the
reward is the head on the last real token (the completion's end of turn). Rows are
grouped by length and padded to power-of-two length buckets and a fixed batch, so the jitted
scorer compiles once per bucket. A rendering longer than the model's context is an error
naming the example, never cut.

`__call__(prompts, completions) -> np.ndarray[float32]` is the reward-function interface the
RL loop (`rl.reward_model`) and best-of-n (llm/align/best_of_n.py) call.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from llm.checkpoint import load_model, model_config_of
from llm.checkpoint.integrity import verify
from llm.checkpoint.manager import CHECKPOINTS, STATE
from llm.config import Config
from llm.data.preference import render_completion
from llm.data.sft import Example, build_row
from llm.inference.engine import bucket
from llm.train.losses.reward import HEAD, rewards
from llm.train.trainable import MODEL
from llm.typing import PyTree

Prompt = str | Sequence[dict[str, str]]  # a user turn, or the conversation before the answer
MIN_LENGTH_BUCKET = 16
DEFAULT_BATCH = 16


def prompt_messages(prompt: Prompt) -> tuple[dict[str, str], ...]:
    """The conversation before the scored answer: a text prompt is one user turn."""
    if isinstance(prompt, str):
        return ({"role": "user", "content": prompt},)
    return tuple(dict(m) for m in prompt)


@dataclasses.dataclass
class RewardModel:
    """A reward model ready to score: decoder + head params, config and tokenizer."""

    config: Config
    params: PyTree  # {"model": decoder (adapters merged), "reward_head": {"w", "b"}}
    tokenizer: Any
    step: int
    path: Path

    @classmethod
    def load(cls, run_dir: str | Path, step: int | None = None) -> RewardModel:
        """The reward model of a `loss.name=reward` run (newest verified or the given step)."""
        path = Path(run_dir).absolute()
        cfg = model_config_of(path)
        if cfg.loss.name != "reward":
            raise ValueError(
                f"{path} is not a reward model: it was trained with loss.name="
                f"{cfg.loss.name!r}; train one with loss.name=reward (configs/rm_tiny.yaml)"
            )
        model = load_model(path, step)
        if model.layout != "run":
            raise ValueError(f"{path} is a {model.layout} model directory, not a training run")
        head = restore_component(path, model.step, HEAD)
        params = {MODEL: model.params, HEAD: head}
        return cls(model.config, params, model.tokenizer, model.step, path)

    @functools.cached_property
    def _score(self) -> Callable[[PyTree, dict[str, np.ndarray]], jax.Array]:
        return jax.jit(lambda params, rows: rewards(self.config.model, params, {}, rows))

    def rows(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[Example]:
        """Each (prompt, completion) rendered with the chat template, as in training."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        out, limit = [], self.config.model.max_seq_len
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            if not isinstance(c, str):
                raise ValueError(f"completion {i} is {type(c).__name__}, not a string")
            ex = render_completion(self.tokenizer, prompt_messages(p), c, f"example {i}")
            if len(ex.ids) > limit:
                raise ValueError(
                    f"example {i} renders to {len(ex.ids)} tokens, more than the reward model's "
                    f"context (model.max_seq_len={limit}); shorten it (it is never cut)"
                )
            out.append(ex)
        return out

    def score(
        self, prompts: Sequence[Prompt], completions: Sequence[str], batch_size: int = DEFAULT_BATCH
    ) -> np.ndarray:
        """[N] float32 rewards of the (prompt, completion) pairs, in the order given."""
        examples = self.rows(prompts, completions)
        out = np.zeros(len(examples), np.float32)
        order = np.argsort([len(x.ids) for x in examples], kind="stable")  # like lengths together
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self._score_batch([examples[i] for i in chunk], batch_size)
        return out

    def _score_batch(self, examples: list[Example], batch_size: int) -> np.ndarray:
        longest = max(len(x.ids) for x in examples)
        L = bucket(longest, MIN_LENGTH_BUCKET, self.config.model.max_seq_len)
        pad = self.tokenizer.pad_id
        rows = [build_row([x], L, pad) for x in examples]
        rows += [build_row([], L, pad)] * (batch_size - len(rows))  # fixed batch: one compile
        batch = {k: np.stack([r[k] for r in rows]) for k in ("inputs", "positions", "segment_ids")}
        return np.asarray(self._score(self.params, batch))[: len(examples)]

    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> np.ndarray:
        """The reward-function interface: [N] float32 rewards."""
        return self.score(prompts, completions)


def restore_component(run_dir: Path, step: int, name: str) -> PyTree:
    """One component's tree (its trained and frozen leaves joined) from a run's step."""
    state_dir = run_dir / CHECKPOINTS / str(step) / STATE
    verify(state_dir.parent)
    tree = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata.tree
    parts = {root: tree.get(root, {}).get(name) for root in ("params", "frozen")}
    if all(v is None for v in parts.values()):
        raise ValueError(
            f"{state_dir.parent} holds no {name!r} component (components: "
            f"{sorted(set(tree.get('params', {})) | set(tree.get('frozen', {})))})"
        )
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    item, args = {}, {}
    for root, sub in parts.items():
        for path, meta in jax.tree_util.tree_flatten_with_path(sub or {})[0]:
            keys = [root, name, *(str(getattr(k, "key", k)) for k in path)]
            shape = jax.ShapeDtypeStruct(tuple(meta.shape), meta.dtype, sharding=one)
            _set(item, keys, shape)
            _set(args, keys, ocp.ArrayRestoreArgs(sharding=one, dtype=meta.dtype))
    restore = ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True)
    restored = ocp.PyTreeCheckpointer().restore(state_dir, args=restore)
    trained, fixed = (restored.get(root, {}).get(name, {}) for root in ("params", "frozen"))
    return _union(trained, fixed)


def _union(a: dict, b: dict) -> dict:
    """Two nested dicts with disjoint leaves as one (a component's trained and frozen parts)."""
    out = dict(a)
    for key, value in b.items():
        out[key] = _union(out[key], value) if key in out else value
    return out


def _set(tree: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value
