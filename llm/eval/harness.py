"""Our models as an lm-evaluation-harness `LM`, so every harness task runs on them.

    results = run_harness("runs/default", ["hellaswag"])                    # installed tasks
    results = run_harness(model, ["my_task"], include_path="my_tasks/")     # local YAML, offline
    lm_eval.simple_evaluate(model="llm", model_args="checkpoint=runs/default,batch_size=8", ...)
                                                    # after `register()` (run_harness calls it)

lm-evaluation-harness (Gao et al., doi:10.5281/zenodo.5371628; EleutherAI/lm-evaluation-harness
0.4) builds every task's requests from its YAML and asks an `LM` for three things, which
`llm.eval.likelihood.Scorer` computes with the harness's own definitions:
  loglikelihood          (context, continuation) -> (log p, is_greedy)     multiple choice
  loglikelihood_rolling  (text,) -> log p of the whole text, in windows     perplexity
  generate_until         (context, {until, max_gen_toks, ...}) -> text      generation
Generation is greedy only: `do_sample: true` or a temperature above 0 is refused, not
silently run greedily. The harness is an optional extra (`pip install -e .[eval]`): it is
imported inside functions, so `import llm.eval.harness` works without it.

With `include_path` the tasks come from that folder alone
(`TaskManager(include_path=..., include_defaults=False)`): nothing is looked up online.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from llm.checkpoint import LoadedModel, load_model
from llm.eval.likelihood import Scorer

NAME = "llm"  # the model's name in lm_eval's registry: simple_evaluate(model="llm", ...)
GEN_KEYS = {"until", "max_gen_toks", "do_sample", "temperature"}  # generation kwargs we honour
HARNESS_ARGS = {"max_batch_size", "device"}  # simple_evaluate passes these; JAX places arrays


class ScorerBackend:
    """The LM methods over a Scorer; `lm_class()` mixes this into lm_eval's `LM`."""

    def __init__(
        self,
        checkpoint: str | None = None,
        *,
        model: LoadedModel | None = None,
        step: int | None = None,
        batch_size: int | str = 8,
        max_len: int | None = None,
        add_bos: bool = True,
        max_gen_toks: int = 256,
        **harness_args: Any,
    ):
        super().__init__()
        unknown = set(harness_args) - HARNESS_ARGS
        if unknown:
            raise ValueError(
                f"model_args {sorted(unknown)} are not arguments of the llm model; it takes "
                "checkpoint, step, batch_size, max_len, add_bos, max_gen_toks"
            )
        if (checkpoint is None) == (model is None):
            raise ValueError("give exactly one of checkpoint=DIR or model=<LoadedModel>")
        if not str(batch_size).isdigit():
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer (no 'auto')")
        loaded = model if model is not None else load_model(checkpoint, step=step)
        self.scorer = Scorer(loaded, batch_size=int(batch_size), max_len=max_len, add_bos=add_bos)
        self.max_gen_toks = int(max_gen_toks)

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        pairs = [tuple(r.args[:2]) for r in requests]
        with self.noting_truncation("loglikelihood"):
            scored = self.scorer.loglikelihood(pairs, progress=True)
        return [(s.logprob, s.is_greedy) for s in scored]

    def loglikelihood_rolling(self, requests: Sequence[Any]) -> list[float]:
        texts = [r.args[0] for r in requests]
        return [s.logprob for s in self.scorer.loglikelihood_rolling(texts, progress=True)]

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        asks = [self.generation_request(*r.args[:2]) for r in requests]
        with self.noting_truncation("generate_until"):
            return self.scorer.generate_until(asks, progress=True)

    @contextlib.contextmanager
    def noting_truncation(self, what: str) -> Iterator[None]:
        """Says on stderr how many requests lost context tokens to fit max_len."""
        before = self.scorer.truncated, self.scorer.truncated_tokens
        yield
        n, tokens = self.scorer.truncated - before[0], self.scorer.truncated_tokens - before[1]
        if n:
            print(f"note: {what}: {n} requests lost their first context tokens ({tokens} in "
                  f"all) to fit max_len={self.scorer.max_len}", file=sys.stderr)  # fmt: skip

    def generation_request(self, context: str, kwargs: dict) -> tuple[str, list[str], int]:
        """(prompt, stop strings, max new tokens) from the harness's generation kwargs."""
        unknown = set(kwargs) - GEN_KEYS
        if unknown:
            raise ValueError(f"generation kwargs {sorted(unknown)} are not supported; "
                             f"the llm model honours {sorted(GEN_KEYS)}")  # fmt: skip
        if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
            raise ValueError(
                "the llm model generates greedily only: the task asks for sampling "
                f"(do_sample={kwargs.get('do_sample')}, temperature={kwargs.get('temperature')})"
            )
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        # The backend's default is capped at half the model's context (a 128-token byte model
        # cannot generate 256); a task's own max_gen_toks is taken as given and checked.
        new = int(kwargs.get("max_gen_toks", min(self.max_gen_toks, self.scorer.max_len // 2)))
        if not 1 <= new < self.scorer.max_len:
            raise ValueError(f"max_gen_toks={new} of the task must be in [1, max_len="
                             f"{self.scorer.max_len}) of the model")  # fmt: skip
        return context, until, new

    @property
    def tokenizer_name(self) -> str:
        return str(self.scorer.model.path)


@functools.cache
def lm_class() -> type:
    """`LlmLM`: ScorerBackend as an `lm_eval.api.model.LM`, registered as "llm"."""
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model

    return register_model(NAME)(type("LlmLM", (ScorerBackend, LM), {"__module__": __name__}))


def register() -> None:
    """Registers the model with lm_eval, so `simple_evaluate(model="llm")` finds it."""
    lm_class()


def __getattr__(name: str) -> Any:
    if name == "LlmLM":  # `from llm.eval.harness import LlmLM` builds the class on demand
        return lm_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_harness(
    model: str | Path | LoadedModel,
    tasks: list[str],
    include_path: str | Path | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    seed: int = 0,
    *,
    batch_size: int = 8,
    add_bos: bool = True,
    bootstrap_iters: int = 1000,
) -> dict:
    """`lm_eval.simple_evaluate` of our model on `tasks`: the harness's results dict
    ("results", "n-samples", "samples", "configs", ...). A directory goes through the
    registry (`model="llm"`); a LoadedModel is wrapped directly, and the dict gains
    "truncated": {"requests", "tokens"} (context cut to fit max_len). Every seed the
    harness takes (python, numpy, torch, few-shot sampling) is `seed`."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    register()
    if include_path is not None and not Path(include_path).is_dir():
        raise ValueError(f"include_path {include_path}: no such directory")
    manager = (
        TaskManager(include_path=str(include_path), include_defaults=False)
        if include_path is not None
        else TaskManager()
    )
    missing = [t for t in tasks if t not in manager.all_tasks]
    if missing:
        where = f"in {include_path}" if include_path is not None else "among the installed tasks"
        raise ValueError(f"harness tasks {missing} not found {where}")
    groups = [t for t in tasks if t in manager.all_groups or t in manager.all_tags]
    if groups:  # their results and item counts are keyed by subtask: name the subtasks instead
        raise ValueError(f"harness names {groups} are groups or tags, not tasks: name their "
                         "tasks one by one")  # fmt: skip
    if isinstance(model, LoadedModel):
        lm: Any = lm_class()(model=model, batch_size=batch_size, add_bos=add_bos)
        model_args = None
    else:
        lm, model_args = NAME, f"checkpoint={model},batch_size={batch_size},add_bos={add_bos}"
    out = lm_eval.simple_evaluate(
        model=lm,
        model_args=model_args,
        tasks=tasks,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        bootstrap_iters=bootstrap_iters,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if not isinstance(lm, str):
        out["truncated"] = {"requests": lm.scorer.truncated, "tokens": lm.scorer.truncated_tokens}
    return out


def harness_results(
    model: LoadedModel,
    task: str,
    include_path: str | Path | None,
    *,
    shots: int | None,
    seed: int,
    limit: int | None,
    batch_size: int = 8,
) -> dict:
    """{"metrics": {name: value}, "stderr": {name: value}, "n": items, "truncated": requests
    whose context was cut to fit max_len, "skipped": items left out by `limit`} of one task,
    for `llm eval --tasks harness:TASK`. Metric names drop the harness's filter suffix
    ("acc,none" -> "acc"); another filter keeps it ("exact_match,strict-match")."""
    out = run_harness(model, [task], include_path, limit, shots, seed, batch_size=batch_size)
    metrics, stderr = {}, {}
    for key, value in out["results"][task].items():
        if "," not in key or not isinstance(value, int | float):
            continue
        name, filt = key.split(",", 1)
        target = stderr if name.endswith("_stderr") else metrics
        name = name.removesuffix("_stderr")
        target[name if filt == "none" else f"{name},{filt}"] = float(value)
    counts = out["n-samples"][task]
    n, skipped = int(counts["effective"]), int(counts["original"]) - int(counts["effective"])
    return {"metrics": metrics, "stderr": stderr, "n": n, "truncated": out["truncated"]["requests"],
            "skipped": {"beyond --limit": skipped} if skipped else {}}  # fmt: skip
