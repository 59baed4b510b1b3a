"""Knowledge distillation (llm/train/losses/distill.py): the formulas against NumPy, the
top-k cache against the full teacher, the teacher's vocabulary check, and a run that learns."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import SyntheticBatches, tiny_config

from llm.compress.seqkd import sequence_kd
from llm.config import DataConfig, ModelConfig, load_config, save_config
from llm.data.sft import read_records
from llm.interop.model_dir import save_model
from llm.model import forward, init_params
from llm.tokenizers.byte import ByteTokenizer
from llm.tokenizers.chat import apply_chat
from llm.train import train
from llm.train.losses import make_loss
from llm.train.losses.distill import (
    TEACHER,
    DistillLoss,
    TopKBatches,
    kd_token_loss,
    kd_topk_token_loss,
    teacher_model,
    write_teacher_topk,
)

V = 259  # the byte vocabulary of the tiny configs
STUDENT = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=32)
TEACHER_CFG = ModelConfig(vocab_size=V, d_model=48, n_layers=3, n_heads=3, d_ff=96, max_seq_len=32)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _np_kl(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    return (np.exp(logp) * (logp - logq)).sum(-1)


def _np_kd(s: np.ndarray, t: np.ndarray, T: float, direction: str) -> np.ndarray:
    """Hinton et al. 2015: T^2 KL(softmax(t/T) || softmax(s/T)); reverse swaps the two."""
    logp, logq = _log_softmax(t / T), _log_softmax(s / T)
    kl = _np_kl(logp, logq) if direction == "forward" else _np_kl(logq, logp)
    return T**2 * kl


def _logits(shape, seed, scale=3.0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("T", [1.0, 2.5])
def test_kd_token_loss_is_the_formula(direction, T):
    s, t = _logits((2, 3, 11), 0), _logits((2, 3, 11), 1)
    got = kd_token_loss(jnp.asarray(s), jnp.asarray(t), T, direction)
    np.testing.assert_allclose(got, _np_kd(s, t, T, direction), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got) > 0)  # distinct distributions: KL > 0
    same = kd_token_loss(jnp.asarray(t), jnp.asarray(t), T, direction)
    np.testing.assert_allclose(same, 0.0, atol=1e-6)


def _topk_np(t: np.ndarray, k: int, T: float):
    logp = _log_softmax(t / T)
    ids = np.argsort(-logp, axis=-1)[..., :k]
    return ids.astype(np.int32), np.take_along_axis(logp, ids, -1).astype(np.float32)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_topk_with_k_vocab_equals_the_full_loss(direction):
    s, t, T = _logits((2, 4, 13), 2), _logits((2, 4, 13), 3), 2.0
    ids, logp = _topk_np(t, 13, T)
    got = kd_topk_token_loss(jnp.asarray(s), jnp.asarray(ids), jnp.asarray(logp), T, direction)
    np.testing.assert_allclose(got, _np_kd(s, t, T, direction), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_topk_is_the_kl_of_k_plus_tail_buckets(direction):
    s, t, T, k = _logits((2, 3, 17), 4), _logits((2, 3, 17), 5), 1.5, 4
    ids, logp = _topk_np(t, k, T)
    logq_all = _log_softmax(s / T)
    logq_k = np.take_along_axis(logq_all, ids, -1)
    tail_q = 1.0 - np.exp(logq_k).sum(-1, keepdims=True)
    tail_p = 1.0 - np.exp(logp.astype(np.float64)).sum(-1, keepdims=True)
    P = np.concatenate([logp, np.log(tail_p)], -1)
    Q = np.concatenate([logq_k, np.log(tail_q)], -1)
    want = T**2 * (_np_kl(P, Q) if direction == "forward" else _np_kl(Q, P))
    got = kd_topk_token_loss(jnp.asarray(s), jnp.asarray(ids), jnp.asarray(logp), T, direction)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # coarsening loses information: never above the full KL (data-processing inequality)
    assert np.all(np.asarray(got) <= _np_kd(s, t, T, direction) + 1e-5)


@functools.partial(jax.jit, static_argnums=0)
def _jit_logits(cfg, params, inputs_BL):
    return forward(cfg, params, inputs_BL).logits_BLV


def _call(loss, params, frozen, batch):
    """The loss's sums, jitted (deterministic: no dropout key)."""
    return jax.jit(lambda p, f, b: loss(p, f, b, None))(params, frozen, batch)


def _batch(B=2, L=16, seed=0):
    return next(iter(SyntheticBatches(B, L, seed=seed)))


def test_distill_loss_is_alpha_kd_plus_hard_ce():
    student, teacher = (
        init_params(STUDENT, jax.random.key(0)),
        init_params(TEACHER_CFG, jax.random.key(1)),
    )
    batch = _batch()
    batch["loss_mask"][0, :5] = 0.0  # a masked prefix must not count
    loss = DistillLoss(STUDENT, TEACHER_CFG, None, temperature=2.0, alpha=0.3, direction="reverse")
    out = _call(loss, {"model": student}, {TEACHER: teacher}, batch)
    s = np.asarray(_jit_logits(STUDENT, student, batch["inputs"]))
    t = np.asarray(_jit_logits(TEACHER_CFG, teacher, batch["inputs"]))
    ce = -np.take_along_axis(_log_softmax(s), batch["targets"][..., None], -1)[..., 0]
    per_token = 0.3 * _np_kd(s, t, 2.0, "reverse") + 0.7 * ce
    mask = batch["loss_mask"]
    np.testing.assert_allclose(float(out.weight), mask.sum())
    np.testing.assert_allclose(float(out.total), (per_token * mask).sum(), rtol=1e-5)
    np.testing.assert_allclose(float(out.metrics["ce"]), (ce * mask).sum(), rtol=1e-5)


def test_cached_topk_with_k_vocab_equals_the_online_teacher(tmp_path):
    student, teacher = (
        init_params(STUDENT, jax.random.key(0)),
        init_params(TEACHER_CFG, jax.random.key(1)),
    )
    batches = [_batch(seed=i) for i in range(2)]
    path = write_teacher_topk(
        TEACHER_CFG, teacher, batches, tmp_path / "topk.npz", k=V, temperature=2.0
    )
    cached = TopKBatches(path, temperature=2.0, top_k=V)
    online = DistillLoss(STUDENT, TEACHER_CFG, None, 2.0, 0.5, "forward")
    offline = DistillLoss(STUDENT, None, None, 2.0, 0.5, "forward", top_k=V)
    assert set(offline.batch_axes) == set(online.batch_axes) | {"teacher_ids", "teacher_logp"}
    for plain in batches:
        row = next(cached)
        np.testing.assert_array_equal(row["inputs"], plain["inputs"])
        a = _call(online, {"model": student}, {TEACHER: teacher}, plain)
        b = _call(offline, {"model": student}, {}, row)
        np.testing.assert_allclose(float(b.total), float(a.total), rtol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        TopKBatches(path, temperature=1.0, top_k=V)


def _val() -> list:
    return list(SyntheticBatches(8, 16, seed=99, limit=1))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """An `llm convert`-style directory of a random teacher with the byte tokenizer."""
    out = tmp_path_factory.mktemp("distill") / "teacher"
    save_model(out, TEACHER_CFG, init_params(TEACHER_CFG, jax.random.key(1)), tokenizer_files={},
               source={"test": "random tiny teacher"})  # fmt: skip
    cfg = load_config(out / "config.yaml")
    save_config(dataclasses.replace(cfg, data=DataConfig(tokenizer="byte")), out / "config.yaml")
    return out


def test_teacher_with_another_vocabulary_is_refused(teacher_dir):
    assert teacher_model(str(teacher_dir), STUDENT).vocab_size == V
    other = ModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=2, d_ff=64)
    with pytest.raises(
        ValueError, match=r"vocab_size=259 but the student has model.vocab_size=300"
    ):
        teacher_model(str(teacher_dir), other)


@pytest.mark.slow  # ~60 s on a loaded 2-core VM (two models compiled on 8 simulated devices)
def test_tiny_distill_run_trains(tmp_path, teacher_dir):
    cfg = tiny_config(tmp_path / "student", "train.steps=8", "loss.name=distill",
                      f"loss.teacher={teacher_dir}", "loss.alpha=0.5")  # fmt: skip
    assert isinstance(make_loss(cfg), DistillLoss)
    result = train(cfg, train_batches=SyntheticBatches(8, 16), val_batches=_val)
    records = [json.loads(line) for line in open(Path(cfg.train.run_dir) / "metrics.jsonl")]
    losses = [r["loss"] for r in records if "ce" in r]  # training steps (not validation)
    ce = [r["ce"] for r in records if "ce" in r]
    assert losses[-1] < 0.9 * losses[0] and ce[-1] < ce[0], (losses, ce)  # measured 2.78 -> 2.42
    assert TEACHER in result["state"].frozen and TEACHER not in result["state"].params


def test_sequence_kd_writes_the_teachers_greedy_answers_as_sft_chats(tmp_path):
    """Kim & Rush 2016: the record's answer is the teacher's greedy continuation of the
    chat-rendered prompt, here recomputed by a plain full-forward argmax loop (no KV cache)."""
    tok, cfg = ByteTokenizer(), dataclasses.replace(TEACHER_CFG, max_seq_len=64)
    teacher = init_params(cfg, jax.random.key(3))
    convs = [[{"role": "user", "content": "Who is there?"}], [{"role": "user", "content": "Hi"}]]
    path = tmp_path / "seqkd.jsonl"
    assert sequence_kd(cfg, teacher, tok, convs, path, max_new_tokens=6) == 2
    logits_of = jax.jit(lambda x: forward(cfg, teacher, x).logits_BLV)
    records = read_records(str(path))
    assert [m[:-1] for m, _ in records] == convs
    for (messages, _), conv in zip(records, convs, strict=True):
        ids = apply_chat(tok, conv, add_generation_prompt=True)
        for _ in range(6):  # causal: the padding after position len(ids) - 1 is not read
            window = np.zeros((1, cfg.max_seq_len), np.int32)
            window[0, : len(ids)] = ids
            ids.append(int(jnp.argmax(logits_of(jnp.asarray(window))[0, len(ids) - 1])))
        answer = tok.decode(ids[-6:]).strip()
        assert messages[-1] == {"role": "assistant", "content": answer}
