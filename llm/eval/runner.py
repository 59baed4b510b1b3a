"""The task runner of `llm eval --tasks`: task specs in, one `TaskResult` per task out.

A task list is comma-separated specs (a path holding a comma cannot be named):

    ppl              the model's validation split (and data.eval_corpus as "ood"), the
                     training-time metric (`llm.train.evaluate`): token ppl and bits per byte
    ppl:SOURCE       per-document perplexity, per domain (`llm.eval.perplexity`): SOURCE is a
                     .jsonl file of {"text", "domain"?, "id"?}, or a corpus name or path whose
                     validation split is scored
    mc:PATH          multiple choice (`llm.eval.multiple_choice`): a .jsonl file, or a
                     directory with test.jsonl (and fewshot.jsonl, the pool of k-shot examples)
    gen:PATH         greedy generation scored against references (`llm.eval.generative`)
    harness:TASK     an lm-evaluation-harness task through `llm.eval.harness`

Task names in the results are KIND:NAME, NAME the file's stem (the directory's name for a
directory or a file named test/validation/val/dev); the bare `ppl` gives `ppl:validation` and
`ppl:ood`. Every per-item metric gets a 95% percentile bootstrap interval of its mean
(`llm.eval.significance.bootstrap_ci`, seeded with --seed); perplexities, ratios of sums, get
a bootstrap over documents of the ratio; harness tasks the harness's standard error x 1.96.
`--limit N` scores the first N items of each task in file order, `--sample N` a seeded random
N of them (numpy `default_rng(seed).choice`, kept in file order: task files are often sorted
by label, so their first N items are one label); the rest are counted in `skipped`, never
dropped silently. k-shot examples are still drawn from the whole file.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from llm.data import make_batches
from llm.eval import generative, multiple_choice, perplexity
from llm.eval.calibration import expected_calibration_error
from llm.eval.harness import harness_results
from llm.eval.likelihood import Scorer
from llm.eval.results import TaskResult
from llm.eval.significance import bootstrap_ci
from llm.train.evaluate import evaluate

KINDS = ("ppl", "mc", "gen", "harness")
PLAIN_PPL = ("validation", "ood")  # the bare `ppl` task's results: ppl:validation, ppl:ood
SPLIT_STEMS = ("test", "validation", "val", "dev")  # file stems named by their directory
N_RESAMPLES = 1000  # bootstrap resamples of every interval


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One entry of --tasks."""

    kind: str  # one of KINDS
    arg: str | None  # the path, corpus or harness task name; None for the bare "ppl"
    name: str  # key in the results
    spec: str  # as given


@dataclasses.dataclass(frozen=True)
class Task:
    """A task spec with its records read (`load_tasks`)."""

    spec: TaskSpec
    items: list | None  # MCItem / GenItem / Doc, all of the file; None: read when run
    pool: list | None  # mc: the k-shot pool (the fewshot file, else `items`)


@dataclasses.dataclass(frozen=True)
class Settings:
    """How every task runs (the command's flags)."""

    shots: int | None = (
        None  # k-shot examples of mc tasks (None: 0); of harness tasks (None: the task's own)
    )
    seed: int = 0  # seed of shot drawing and bootstrap intervals
    limit: int | None = None  # items scored per task (first N in file order); None = all
    sample: int | None = None  # items scored per task, a seeded random N (file order kept)
    batch_size: int = 8  # rows per forward pass
    max_new_tokens: int = 64  # generation length of gen tasks
    fewshot_file: str | None = None  # pool of k-shot examples for the (single) mc task
    include_path: str | None = None  # local lm-eval task YAMLs for harness tasks
    progress: bool = False  # tqdm bars on stderr


def parse_tasks(text: str) -> list[TaskSpec]:
    """The specs of a --tasks value (module docstring); ValueError names a bad one."""
    specs = [_spec(part.strip()) for part in text.split(",") if part.strip()]
    if not specs:
        raise ValueError(f"--tasks {text!r}: no task given")
    names = [
        n
        for s in specs
        for n in (
            (f"ppl:{PLAIN_PPL[0]}", f"ppl:{PLAIN_PPL[1]}")
            if s.kind == "ppl" and s.arg is None
            else (s.name,)
        )
    ]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"--tasks: two tasks would both be named {name!r}; rename a file")
    return specs


def _spec(part: str) -> TaskSpec:
    kind, sep, arg = part.partition(":")
    if kind not in KINDS:
        raise ValueError(f"--tasks {part!r}: unknown task kind {kind!r} (one of {KINDS})")
    if not sep:
        if kind != "ppl":
            raise ValueError(f"--tasks {part!r}: give {kind}:PATH")
        return TaskSpec("ppl", None, "ppl", part)
    if not arg:
        raise ValueError(f"--tasks {part!r}: nothing after {kind}:")
    path = Path(arg)
    if kind in ("mc", "gen") and not path.exists():
        raise ValueError(f"--tasks {part!r}: {arg} does not exist")
    if kind == "harness":
        return TaskSpec(kind, arg, f"harness:{arg}", part)
    stem = path.name if path.is_dir() else path.stem
    if stem in SPLIT_STEMS:
        stem = path.absolute().parent.name
    return TaskSpec(kind, arg, f"{kind}:{stem}", part)


def mc_files(arg: str, fewshot_file: str | None) -> tuple[str, str | None]:
    """(items file, few-shot pool file or None) of an mc spec's PATH."""
    path = Path(arg)
    if path.is_dir():
        if not (path / "test.jsonl").is_file():
            raise ValueError(f"mc:{arg}: a task directory needs test.jsonl")
        pool = path / "fewshot.jsonl"
        if fewshot_file is None and pool.is_file():
            fewshot_file = str(pool)
        path = path / "test.jsonl"
    return str(path), fewshot_file


def selected(items: list, s: Settings) -> tuple[list, dict[str, int]]:
    """The items a run scores, and the count of the others by reason: the first `s.limit`,
    or `s.sample` drawn by `default_rng(s.seed)` without replacement and kept in file order."""
    if s.sample is not None and s.sample < len(items):
        keep = np.sort(np.random.default_rng(s.seed).choice(len(items), s.sample, replace=False))
        return [items[i] for i in keep], {"not in --sample": len(items) - s.sample}
    if s.limit is None or s.limit >= len(items):
        return items, {}
    return items[: s.limit], {"beyond --limit": len(items) - s.limit}


def intervals(per_item: dict[str, np.ndarray], seed: int) -> dict[str, tuple[float, float]]:
    """95% bootstrap interval of the mean of each per-item metric."""
    return {k: bootstrap_ci(v, n_resamples=N_RESAMPLES, seed=seed) for k, v in per_item.items()}


def domain_breakdown(domains: list[str | None], per_item: dict[str, np.ndarray]) -> dict:
    """{domain: {"n", "metrics": means of per-item values}} when any item names a domain."""
    if all(d is None for d in domains):
        return {}
    labels = np.array(["(none)" if d is None else d for d in domains])
    return {
        d: {"n": int(np.sum(labels == d)),
            "metrics": {k: float(v[labels == d].mean()) for k, v in per_item.items()}}
        for d in sorted(set(labels.tolist()))
    }  # fmt: skip


def run_mc(task: Task, scorer: Any, s: Settings) -> TaskResult:
    """acc, acc_norm (with intervals), ECE of the top choice's probability, per domain."""
    items, skipped = selected(task.items, s)
    before = scorer.truncated
    scores = multiple_choice.evaluate(scorer, items, pool=task.pool, shots=s.shots or 0,
                                      seed=s.seed, progress=s.progress)  # fmt: skip
    values = {"acc": scores.acc, "acc_norm": scores.acc_norm}
    confidence = np.array([p.max() for p in scores.probs])
    metrics = {k: float(v.mean()) for k, v in values.items()}
    metrics["ece"] = expected_calibration_error(confidence, scores.acc)
    per_item = {
        "id": [i.id for i in items],
        **{k: v.tolist() for k, v in values.items()},
        "gold": [i.gold for i in items],
        "pred": scores.pred.tolist(),
        "probs": [p.tolist() for p in scores.probs],
        "lls": [ll.tolist() for ll in scores.lls],
    }
    domains = domain_breakdown([i.domain for i in items], values)
    return TaskResult("mc", len(items), metrics, intervals(values, s.seed), per_item, skipped,
                      domains, scorer.truncated - before)  # fmt: skip


def run_gen(task: Task, scorer: Any, s: Settings) -> TaskResult:
    """exact_match, f1, rougeL (with intervals), corpus BLEU and chrF of greedy answers."""
    items, skipped = selected(task.items, s)
    before = scorer.truncated
    answers = generative.generate(scorer, items, max_new_tokens=s.max_new_tokens,
                                  progress=s.progress)  # fmt: skip
    values, corpus = generative.score(items, answers)
    metrics = {k: float(v.mean()) for k, v in values.items()} | corpus
    per_item = {"id": [i.id for i in items], **{k: v.tolist() for k, v in values.items()},
                "answer": list(answers)}  # fmt: skip
    return TaskResult("gen", len(items), metrics, intervals(values, s.seed), per_item, skipped,
                      truncated=scorer.truncated - before)  # fmt: skip


def run_ppl_docs(task: Task, scorer: Any, data_cfg: Any, s: Settings) -> TaskResult:
    """Word/byte/token perplexity and bits per byte of documents, per domain."""
    docs = task.items
    if docs is None:  # a corpus, read as training data is: needs the model's data config
        docs = perplexity.corpus_docs(data_cfg, task.spec.arg)
    docs, skipped = selected(docs, s)
    scores = perplexity.score_docs(scorer, docs, progress=s.progress)
    ci = perplexity.intervals(scores, n_resamples=N_RESAMPLES, seed=s.seed)
    per_item = {
        "id": [d.id for d in docs],
        "logprob": scores.logprob.tolist(),
        "doc_bits_per_byte": (-scores.logprob / scores.bytes / perplexity.LN2).tolist(),
        "tokens": scores.tokens.astype(int).tolist(),
        "bytes": scores.bytes.astype(int).tolist(),
        "words": scores.words.astype(int).tolist(),
    }
    domains = {}
    if any(d.domain is not None for d in docs):
        labels = np.array(["(none)" if d.domain is None else d.domain for d in docs])
        for name in sorted(set(labels.tolist())):
            index = np.flatnonzero(labels == name)
            domains[name] = {"n": int(index.size), "metrics": perplexity.metrics(scores, index)}
    return TaskResult("ppl", len(docs), perplexity.metrics(scores), ci, per_item, skipped, domains)


def run_ppl_run(model: Any, s: Settings) -> dict[str, TaskResult]:
    """The training-time validation metric on the model's split and its ood corpus."""
    cfg = model.config
    sets = [(PLAIN_PPL[0], cfg, "validation")]
    if cfg.data.eval_corpus:
        data = dataclasses.replace(cfg.data, corpus=cfg.data.eval_corpus)
        sets.append((PLAIN_PPL[1], dataclasses.replace(cfg, data=data), "ood"))
    out = {}
    for name, c, split in sets:
        m = evaluate(c.model, model.params, make_batches(c, split, model.tokenizer),
                     model.tokenizer, c.eval.batches)  # fmt: skip
        metrics = {"loss": m["loss"], "token_perplexity": m["ppl"], "bits_per_byte": m["bpb"]}
        out[f"ppl:{name}"] = TaskResult("ppl", int(m["tokens"]), metrics, {}, {})
    return out


def run_harness(spec: TaskSpec, model: Any, s: Settings) -> TaskResult:
    """An lm-evaluation-harness task: its aggregate metrics, and as intervals the normal
    approximation metric +- 1.96 x the harness's standard error (no per-item values)."""
    got = harness_results(model, spec.arg, s.include_path, shots=s.shots, seed=s.seed,
                          limit=s.limit, batch_size=s.batch_size)  # fmt: skip
    metrics = {k: float(v) for k, v in got["metrics"].items()}
    ci = {
        k: (metrics[k] - 1.96 * se, metrics[k] + 1.96 * se)
        for k, se in got.get("stderr", {}).items()
        if k in metrics and math.isfinite(se)
    }
    return TaskResult("harness", int(got["n"]), metrics, ci, {}, got["skipped"],
                      truncated=int(got["truncated"]))  # fmt: skip


def load_tasks(specs: list[TaskSpec], s: Settings) -> list[Task]:
    """Every task's records read and checked, before any model is loaded (a bad record fails
    fast, naming file:line). Corpora for ppl:SOURCE are read later, with the model's config."""
    tasks = []
    for spec in specs:
        items, pool = None, None
        if spec.kind == "mc":
            items_file, pool_file = mc_files(spec.arg, s.fewshot_file)
            items = multiple_choice.read_items(items_file)
            pool = multiple_choice.read_items(pool_file) if pool_file else items
            # the fewest shots any item can draw: the pool without that item's own id
            ids = {p.id for p in pool}
            available = len(ids) - (1 if any(i.id in ids for i in items) else 0)
            if (s.shots or 0) > available:
                raise ValueError(f"{spec.spec}: {s.shots} shots asked for, but the few-shot "
                                 f"pool has {available} items")  # fmt: skip
        elif spec.kind == "gen":
            items = generative.read_items(spec.arg)
        elif spec.kind == "ppl" and spec.arg is not None and spec.arg.endswith(".jsonl"):
            items = perplexity.read_docs(spec.arg)
        tasks.append(Task(spec, items, pool))
    return tasks


def run_tasks(model: Any, tasks: list[Task], s: Settings) -> dict[str, TaskResult]:
    """Every task on the loaded model (`llm.checkpoint.LoadedModel`), in order."""
    if not model.config.model.causal:  # every task scores next-token log-likelihoods
        raise ValueError(
            "--tasks: model.causal=false is a bidirectional encoder; it sees the continuation "
            "it would score (perplexity, multiple choice, generation), so no task measures "
            "it: evaluate an encoder with its training loss (mlm) or `llm embed`"
        )
    scorer = Scorer(model, batch_size=s.batch_size)
    results: dict[str, TaskResult] = {}
    for task in tasks:
        kind, name = task.spec.kind, task.spec.name
        if kind == "mc":
            got = {name: run_mc(task, scorer, s)}
        elif kind == "gen":
            got = {name: run_gen(task, scorer, s)}
        elif kind == "harness":
            got = {name: run_harness(task.spec, model, s)}
        elif task.spec.arg is None:
            got = run_ppl_run(model, s)
        else:
            got = {name: run_ppl_docs(task, scorer, model.config.data, s)}
        for clash in got.keys() & results.keys():
            raise ValueError(f"--tasks: two tasks are both named {clash!r}; rename a file")
        results |= got
    return results
