"""The classification loss (llm/train/losses/classification.py) and its runs.

References are computed apart from the loss: pooling by hand, the cross-entropy in NumPy
from a plain forward's hidden states, label-token scores by summing log-probabilities of a
plain forward over each unpadded prompt + verbaliser.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).parent))

from train_fixtures import tiny_config

from llm.config import load_config
from llm.data import resolve_labels
from llm.data.classification import candidate_rows
from llm.eval.classification import classification_metrics
from llm.model import forward, init_params
from llm.train import train
from llm.train.build import run_trainable
from llm.train.losses import make_loss
from llm.train.losses.classification import HEAD, label_token_scores, pool
from tests.data.classification_fixtures import toy_records, write_jsonl

LABELS = ["loss.labels=[a,b,c]"]


def test_pooling_picks_the_last_real_token_and_averages_real_tokens():
    h_BLD = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    seg_BL = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    last = np.asarray(pool(jnp.asarray(h_BLD), jnp.asarray(seg_BL), "last"))
    np.testing.assert_array_equal(last, [h_BLD[0, 1], h_BLD[1, 3]])  # by hand: rows end at 1, 3
    mean = np.asarray(pool(jnp.asarray(h_BLD), jnp.asarray(seg_BL), "mean"))
    np.testing.assert_allclose(mean, [h_BLD[0, :2].mean(0), h_BLD[1].mean(0)], rtol=1e-6)


def _linear_batch(rng, B=4, L=8, C=3):
    lengths = np.array([3, 8, 5, 1])
    seg = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
    return {
        "inputs": rng.integers(0, 256, (B, L)).astype(np.int32) * seg,
        "positions": np.tile(np.arange(L, dtype=np.int32), (B, 1)),
        "segment_ids": seg,
        "label": np.array([0, 2, 1, 2], np.int32),
        "weight": np.array([1, 1, 1, 0], np.float32),  # the last row is padding
    }


def test_linear_loss_equals_numpy_cross_entropy(tmp_path):
    cfg = tiny_config(tmp_path, "loss.name=classification", *LABELS)
    loss = make_loss(cfg)
    model = init_params(cfg.model, jax.random.key(0))
    rng = np.random.default_rng(0)
    head = {"w": rng.normal(size=(32, 3)).astype(np.float32), "b": np.array([0.1, -0.2, 0.3])}
    batch = _linear_batch(rng)
    out = jax.jit(lambda p, b: loss(p, {}, b, None))({"model": model, HEAD: head}, batch)
    # reference: hidden states of a plain forward, last real token, logits and CE in NumPy
    run = jax.jit(lambda x, s: forward(cfg.model, model, x, segment_ids_BL=s).hidden_BLD)
    hidden = np.asarray(run(batch["inputs"], batch["segment_ids"]))
    last = hidden[np.arange(4), batch["segment_ids"].sum(1) - 1]
    logits = last.astype(np.float64) @ head["w"] + head["b"]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -logp[np.arange(4), batch["label"]]
    np.testing.assert_allclose(float(out.total), (ce * batch["weight"]).sum(), rtol=1e-5)
    assert float(out.weight) == 3.0
    hits = (logits.argmax(-1) == batch["label"]) * batch["weight"]
    assert float(out.metrics["accuracy"]) == hits.sum()


def test_zero_head_loss_is_log_c(tmp_path):
    """The head starts at zero: every example's loss is exactly log C at step 0."""
    cfg = tiny_config(tmp_path, "loss.name=classification", *LABELS)
    loss = make_loss(cfg)
    head = loss.components(cfg.model)[HEAD].build(jax.random.key(1))
    params = {"model": init_params(cfg.model, jax.random.key(0)), HEAD: head}
    out = jax.jit(lambda p, b: loss(p, {}, b, None))(
        params, _linear_batch(np.random.default_rng(1))
    )
    np.testing.assert_allclose(float(out.total) / float(out.weight), np.log(3), rtol=1e-6)


def test_label_token_scores_equal_summed_log_probs_of_a_plain_forward(tmp_path):
    cfg = tiny_config(tmp_path)
    model = init_params(cfg.model, jax.random.key(0))
    prompts = [[257, 10, 11, 12], [257, 40, 41, 42, 43, 44, 45]]
    verbs = [[100], [101, 102, 103], [104, 105]]
    rows = candidate_rows(prompts, verbs, L=12, pad=256)
    batch = {k: jnp.asarray(v) for k, v in rows.items()}
    scores = np.asarray(
        jax.jit(lambda b: label_token_scores(cfg.model, {"model": model}, {}, b))(batch)
    )
    # reference: one plain forward (no segment ids) per prompt + verbaliser; trailing pads
    # cannot change earlier logits of a causal model, so the sequences share one shape
    seqs = [p + v + [256] * (12 - len(p) - len(v)) for p in prompts for v in verbs]
    logits = jax.jit(lambda x: forward(cfg.model, model, x).logits_BLV)(np.array(seqs))
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)), np.float64)
    for i, prompt in enumerate(prompts):
        for c, verb in enumerate(verbs):
            row = logp[i * len(verbs) + c]
            want = sum(row[len(prompt) - 1 + j, tok] for j, tok in enumerate(verb))
            np.testing.assert_allclose(scores[i, c], want, rtol=1e-5, atol=1e-5)


def test_macro_f1_matches_sklearn():
    """Fixed predictions with an unbalanced label set and a class never predicted."""
    true = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 3])
    pred = np.array([0, 0, 1, 2, 1, 1, 2, 0, 2, 0])
    m = classification_metrics(true, pred, ["w", "x", "y", "z"])
    want = f1_score(true, pred, average="macro", labels=[0, 1, 2, 3], zero_division=0)
    np.testing.assert_allclose(m["macro_f1"], want, rtol=1e-12)
    per = f1_score(true, pred, average=None, labels=[0, 1, 2, 3], zero_division=0)
    np.testing.assert_allclose([m[f"f1/{k}"] for k in "wxyz"], per, rtol=1e-12)
    assert m["accuracy"] == 0.6 and m["confusion"][0] == [2, 1, 1, 0] and m["confusion"][3][0] == 1


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("cls") / "toy.jsonl", toy_records(120))


def _run(run_dir, corpus, *extra):
    cfg = tiny_config(run_dir, f"data.corpus={corpus}", "data.format=classification",
                      "loss.name=classification", "data.val_fraction=0.25",
                      "data.eval_corpus=null", "eval.batches=8", *extra)  # fmt: skip
    return train(cfg)


def test_tiny_run_beats_chance_and_records_the_labels(tmp_path, toy):
    """A separable 3-class task (each class its own alphabet): chance is 1/3."""
    result = _run(tmp_path / "run", toy, "train.steps=25")
    assert result["val"]["accuracy"] > 0.8 and result["val"]["macro_f1"] > 0.8
    assert result["val"]["examples"] == 30
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["loss"]["labels"] == ["digit", "punct", "vowel"]  # resolved from the data


@pytest.mark.parametrize("extra", [["peft.method=lora"], ["train.freeze=[.]"]])
def test_the_head_exists_and_trains_beside_an_adapter_or_a_frozen_decoder(tmp_path, toy, extra):
    result = _run(tmp_path / "run", toy, "train.steps=4", *extra)
    params, frozen = result["state"].params, result["state"].frozen
    assert params[HEAD]["w"].shape == (32, 3)  # d_model x labels
    assert float(jnp.abs(params[HEAD]["w"]).sum()) > 0  # moved from its zero init
    if extra == ["peft.method=lora"]:
        assert "lora" in params and "model" not in params
        b = jax.tree.leaves({k: v for k, v in params["lora"].items()})
        assert any(float(jnp.abs(x).sum()) > 0 for x in b)
    else:
        assert set(params) == {HEAD} and "model" in frozen


def test_label_tokens_need_no_new_params(tmp_path, toy):
    task = [f"data.corpus={toy}", "data.format=classification", "loss.name=classification"]
    cfg = resolve_labels(tiny_config(tmp_path, *task, "loss.head=label_tokens"))
    assert run_trainable(cfg, make_loss(cfg)).extra == {}
    with pytest.raises(ValueError, match="nothing would be trained"):
        _run(tmp_path / "run", toy, "loss.head=label_tokens", "train.freeze=[.]", "train.steps=1")


PRESETS = Path(__file__).parents[2] / "configs"


def test_classify_tiny_preset_learns_the_toy_task(tmp_path, toy):
    """CI runs the byte-model preset as written, on the toy task and fewer steps."""
    cfg = load_config(PRESETS / "classify_tiny.yaml",
                      [f"data.corpus={toy}", f"train.run_dir={tmp_path}", "train.steps=30",
                       "train.seq_len=16", "train.batch_size=8", "eval.batches=8"])  # fmt: skip
    result = train(cfg)
    assert result["val"]["accuracy"] > 0.8  # chance: 1/3


def test_classify_smollm2_preset_names_the_benchmark_plays():
    cfg = load_config(PRESETS / "classify_smollm2.yaml")
    bench = (PRESETS.parent / "bench" / "classification.py").read_text()
    assert cfg.loss.name == "classification" and cfg.data.format == "classification"
    assert all(f'"{label}"' in bench for label in cfg.loss.labels)
