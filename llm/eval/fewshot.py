"""Zero-, one- and few-shot classification by prompting: no training, label-token scoring.

The in-context learning of GPT-3 (Brown et al. 2020, arXiv:2005.14165, sec. 2): k labelled
examples are written into the prompt before the query, each as the classification prompt
followed by its label's verbaliser, and the answer is the label whose verbaliser tokens the
model finds most probable after the query's prompt (the sum of their log-probabilities,
the score the `label_tokens` head trains, `llm.train.losses.classification`; here the prompt
runs once and its KV cache serves every label, `cached_label_scores`). An optional
instruction line (e.g. the list of labels) opens the prompt; with k = 0 it is all the model
is told. The same k shots, drawn once from the training split with a
seed, serve every query, so the comparison with fine-tuning sees the same validation split.

    scores = prompt_scores(model_cfg, params, tokenizer, loss_cfg, shots, queries)
    metrics = evaluate_scores(scores, labels, loss_cfg.labels)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llm.data.classification import Record, prompt_ids, verbalizer_ids
from llm.model import forward, unembed
from llm.model.cache import init_cache
from llm.train.losses.classification import evaluate_scores
from llm.typing import Array, PyTree


def fewshot_text(shots: Sequence[Record], text: str, loss_cfg: Any, instruction: str = "") -> str:
    """The prompt: instruction, then each shot as prompt + verbaliser, then the query."""
    parts = [instruction] if instruction else []
    for shot in shots:
        answer = loss_cfg.verbalizer.format(label=shot.label)
        parts.append(loss_cfg.prompt.format(text=shot.text) + answer)
    parts.append(loss_cfg.prompt.format(text=text))
    return "\n\n".join(parts)


def draw_shots(records: Sequence[Record], k: int, seed: int) -> list[Record]:
    """k training records drawn without replacement (seeded); in the order drawn."""
    if k > len(records):
        raise ValueError(f"{k} shots asked for, but the training split has {len(records)}")
    order = np.random.default_rng(seed).permutation(len(records))[:k]
    return [records[i] for i in order]


def prompt_scores(
    model: Any,
    params: PyTree,
    tokenizer: Any,
    loss_cfg: Any,
    shots: Sequence[Record],
    queries: Sequence[Record],
    *,
    seq_len: int | None = None,
    batch_size: int = 8,
    instruction: str = "",
    add_bos: bool = True,
) -> np.ndarray:
    """[N, C] label-token scores of each query under the k-shot prompt (no training).

    seq_len: prompt tokens per row; None = the longest prompt rounded up to 16 tokens."""
    verbs = verbalizer_ids(tokenizer, loss_cfg)
    prompts = [
        prompt_ids(tokenizer, fewshot_text(shots, q.text, loss_cfg, instruction), "{text}", add_bos)
        for q in queries
    ]
    if seq_len is None:
        seq_len = -(-max(map(len, prompts)) // 16) * 16
    for q, ids in zip(queries, prompts, strict=True):
        if len(ids) > seq_len:
            raise ValueError(
                f"{q.origin}: the {len(shots)}-shot prompt needs {len(ids)} tokens > "
                f"seq_len={seq_len}; raise it"
            )
    verb_CM, vmask_CM = verb_table(verbs, tokenizer.pad_id)
    score = _scorer(model)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # one shape: one compile
        prompt_BL = np.full((batch_size, seq_len), tokenizer.pad_id, np.int32)
        seg_BL = np.zeros((batch_size, seq_len), np.int32)
        for b, ids in enumerate(chunk):
            prompt_BL[b, : len(ids)], seg_BL[b, : len(ids)] = ids, 1
        scores = score(params, prompt_BL, seg_BL, verb_CM, vmask_CM)
        out.append(np.asarray(scores)[: len(prompts) - start])
    return np.concatenate(out)


def verb_table(verbs: Sequence[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """[C, M] verbaliser ids right-padded, and their mask."""
    M = max(map(len, verbs))
    ids = np.array([v + [pad] * (M - len(v)) for v in verbs], np.int32)
    return ids, (np.arange(M)[None] < np.array([len(v) for v in verbs])[:, None])


def cached_label_scores(
    model: Any, params: PyTree, prompt_BL: Array, seg_BL: Array, verb_CM: Array, mask_CM: Array
) -> Array:
    """[B, C] label-token scores with the prompt run once: its KV cache is copied to each of
    the C labels, which then run only their verbaliser tokens (C x M instead of C x L tokens
    per query; the same numbers as `label_token_scores` on `candidate_rows`, tested)."""
    B, C, M = prompt_BL.shape[0], *verb_CM.shape
    cache = init_cache(model, B, prompt_BL.shape[1] + M)
    out = forward(model, params, prompt_BL, segment_ids_BL=seg_BL, cache=cache, return_logits=False)
    last_B = jnp.sum(seg_BL > 0, axis=1) - 1
    h_B1D = jnp.take_along_axis(out.hidden_BLD, last_B[:, None, None], axis=1)
    logp_BV = jax.nn.log_softmax(unembed(model, params, h_B1D)[:, 0].astype(jnp.float32))
    first_BC = logp_BV[:, verb_CM[:, 0]]
    if M == 1:
        return first_BC
    cache = out.cache.select_rows(jnp.repeat(jnp.arange(B), C))  # row b * C + c
    rest = forward(model, params, jnp.tile(verb_CM[:, :-1], (B, 1)),
                   segment_ids_BL=jnp.tile(mask_CM[:, 1:], (B, 1)).astype(jnp.int32),
                   cache=cache, return_logits=False)  # fmt: skip
    logp_NMV = jax.nn.log_softmax(unembed(model, params, rest.hidden_BLD).astype(jnp.float32))
    target_NM = jnp.tile(verb_CM[:, 1:], (B, 1))
    picked_NM = jnp.take_along_axis(logp_NMV, target_NM[..., None], axis=-1)[..., 0]
    rest_BC = jnp.sum(picked_NM * jnp.tile(mask_CM[:, 1:], (B, 1)), axis=-1).reshape(B, C)
    return first_BC + rest_BC


@functools.cache
def _scorer(model: Any):
    """One jitted scorer per model config (params are an argument, never a constant)."""
    return jax.jit(functools.partial(cached_label_scores, model))


def evaluate_prompting(
    model: Any,
    params: PyTree,
    tokenizer: Any,
    loss_cfg: Any,
    train: Sequence[Record],
    queries: Sequence[Record],
    k: int,
    *,
    seed: int = 0,
    **kwargs: Any,
) -> dict[str, Any]:
    """loss, accuracy, macro_f1, per-class F1 and confusion of k-shot prompting on `queries`."""
    shots = draw_shots(train, k, seed)
    scores = prompt_scores(model, params, tokenizer, loss_cfg, shots, queries, **kwargs)
    index = {label: i for i, label in enumerate(loss_cfg.labels)}
    labels = np.array([index[q.label] for q in queries])
    return evaluate_scores(scores, labels, tuple(loss_cfg.labels))
