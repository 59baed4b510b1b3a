"""make_batches: shapes, determinism, per-process shards, one validation pass, exact resume."""

from __future__ import annotations

import collections
import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from llm.data import load_shards, make_batches
from llm.tokenizers import ByteTokenizer

TOK = ByteTokenizer()
KEYS = {
    "inputs": np.int32,
    "targets": np.int32,
    "segment_ids": np.int32,
    "positions": np.int32,
    "loss_mask": np.float32,
}


@pytest.fixture(scope="module")
def cfg(txt_corpus, tmp_path_factory, small_config):
    folder, _ = txt_corpus
    return small_config(folder, tmp_path_factory.mktemp("cache"))


def _take(it, n):
    return [next(it) for _ in range(n)]


def _equal(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True)
    )


def test_batch_contract(cfg):
    batch = next(make_batches(cfg, "train", TOK))
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        k: ((8, 32), np.dtype(t)) for k, t in KEYS.items()
    }
    trained = batch["loss_mask"] == 1
    np.testing.assert_array_equal(
        batch["targets"][:, :-1][trained[:, :-1]], batch["inputs"][:, 1:][trained[:, :-1]]
    )


def test_same_seed_same_batches_other_seed_differs(cfg, small_config):
    a = _take(make_batches(cfg, "train", TOK), 5)
    assert _equal(a, _take(make_batches(cfg, "train", TOK), 5))
    other = small_config(cfg.data.corpus, cfg.data.cache_dir, "data.seed=1")
    assert not _equal(a, _take(make_batches(other, "train", TOK), 5))


@pytest.mark.parametrize("count", [2, 4])
def test_process_shards_are_disjoint_and_cover_the_global_batch(cfg, count):
    """Process blocks, concatenated in process order, are exactly the one-process batches."""
    single = _take(make_batches(cfg, "train", TOK), 6)
    parts = [_take(make_batches(cfg, "train", TOK, p, count), 6) for p in range(count)]
    for k in range(6):
        for key in KEYS:
            blocks = [parts[p][k][key] for p in range(count)]
            assert all(b.shape == (8 // count, 32) for b in blocks)
            np.testing.assert_array_equal(np.concatenate(blocks), single[k][key])


def test_process_shard_reads_only_its_rows(cfg, monkeypatch, small_config):
    from llm.data.packing import PackedRows

    read = collections.Counter()
    original = PackedRows.__getitem__
    monkeypatch.setattr(
        PackedRows, "__getitem__", lambda self, r: read.update([r]) or original(self, r)
    )
    cfg1 = small_config(
        cfg.data.corpus, cfg.data.cache_dir, "data.read_threads=0", "data.prefetch=0"
    )
    _take(make_batches(cfg1, "validation", TOK, 1, 2), 2)
    assert sorted(read) == list(range(4, 8)) + list(range(12, 16))


def test_validation_is_one_padded_pass_with_every_token_once(cfg):
    shard = load_shards(cfg.data, TOK)[0]["validation"]
    counts = [0, 0]
    tokens = collections.Counter()
    for p in range(2):
        for batch in make_batches(cfg, "validation", TOK, p, 2):
            counts[p] += 1
            tokens.update(batch["inputs"][batch["segment_ids"] > 0].tolist())
    assert counts[0] == counts[1] > 0  # every process runs the same number of eval steps
    assert tokens == collections.Counter(np.asarray(shard.tokens).tolist())


def test_train_epoch_has_every_token_once(txt_corpus, tmp_path, small_config):
    """With one row per batch, the first `rows` batches are exactly one epoch."""
    cfg1 = small_config(txt_corpus[0], tmp_path, "train.batch_size=1")
    shard = load_shards(cfg1.data, TOK)[0]["train"]
    rows = -(-shard.num_tokens // 32)
    it = make_batches(cfg1, "train", TOK)
    tokens = collections.Counter()
    for batch in _take(it, rows):
        tokens.update(batch["inputs"][batch["segment_ids"] > 0].tolist())
    assert tokens == collections.Counter(np.asarray(shard.tokens).tolist())
    assert shard.num_docs == 24  # 30 documents, 20% held out by document


RESUME = """
import json, sys
import numpy as np
from llm.config import load_config
from llm.data import make_batches
from llm.tokenizers import ByteTokenizer
overrides, count, n = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
state = json.load(open(sys.argv[4]))
out = []
for p in range(count):
    it = make_batches(load_config(None, overrides), "train", ByteTokenizer(), p, count)
    it.set_state(state)
    out.append([next(it)["inputs"].tolist() for _ in range(n)])
glued = [np.concatenate([out[p][k] for p in range(count)]).tolist() for k in range(n)]
print(json.dumps(glued))
"""


@pytest.mark.parametrize("count", [1, 2])
def test_resume_in_a_fresh_process(cfg, tmp_path, count, small_overrides):
    """N batches straight == k batches, save state, restore in a new process, N - k more.

    count=2 restores a one-process state with two processes: supported, and exact.
    """
    n, k = 7, 3
    straight = [b["inputs"].tolist() for b in _take(make_batches(cfg, "train", TOK), n)]
    it = make_batches(cfg, "train", TOK)
    first = [b["inputs"].tolist() for b in _take(it, k)]
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(it.get_state()))
    assert len(state_file.read_text()) < 400
    overrides = json.dumps(small_overrides(cfg.data.corpus, cfg.data.cache_dir))
    args = [overrides, str(count), str(n - k), str(state_file)]
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RESUME), *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert first + json.loads(proc.stdout) == straight


def test_restore_refuses_another_stream(cfg, small_config):
    state = make_batches(cfg, "train", TOK).get_state()
    other = small_config(cfg.data.corpus, cfg.data.cache_dir, "train.batch_size=4")
    with pytest.raises(ValueError, match="global_batch_size=8 in the saved state but 4 now"):
        make_batches(other, "train", TOK).set_state(state)
    with pytest.raises(ValueError, match="split='train' in the saved state but 'validation' now"):
        make_batches(cfg, "validation", TOK).set_state(state)
    with pytest.raises(ValueError, match="batch_size=8 is not divisible by process_count=3"):
        make_batches(cfg, "train", TOK, 0, 3)


def test_mlm_objective_batches(cfg, small_config):
    mlm = small_config(cfg.data.corpus, cfg.data.cache_dir, "data.objective=mlm")
    plain, masked = next(make_batches(cfg, "train", TOK)), next(make_batches(mlm, "train", TOK))
    np.testing.assert_array_equal(plain["segment_ids"], masked["segment_ids"])
    selected = masked["loss_mask"] == 1
    np.testing.assert_array_equal(masked["targets"][selected], plain["inputs"][selected])
    np.testing.assert_array_equal(masked["inputs"][~selected], plain["inputs"][~selected])
    assert (masked["inputs"][selected] == TOK.vocab_size).mean() > 0.5  # the MASK id


def test_ood_split_and_cache_key(txt_corpus, tmp_path, small_config, random_text):
    ood_dir = tmp_path / "ood"
    ood_dir.mkdir()
    rng = np.random.default_rng(7)
    for i in range(3):
        (ood_dir / f"o{i}.txt").write_text(random_text(rng, 60))
    cfg = small_config(txt_corpus[0], tmp_path / "cache", f"data.eval_corpus={ood_dir}")
    shards, report, key = load_shards(cfg.data, TOK, ood=True)
    assert list(shards) == ["ood"] and report.splits["ood"] == 3
    tokens = collections.Counter()
    for batch in make_batches(cfg, "ood", TOK):
        tokens.update(batch["inputs"][batch["segment_ids"] > 0].tolist())
    assert tokens == collections.Counter(np.asarray(shards["ood"].tokens).tolist())
    assert load_shards(cfg.data, TOK, ood=True)[2] == key  # cached: same key, no rebuild
    (ood_dir / "o0.txt").write_text("edited document " * 20)
    assert load_shards(cfg.data, TOK, ood=True)[2] != key  # a changed file re-tokenizes


def test_pretokenized_folder_is_read_and_checked_against_the_tokenizer(cfg, tmp_path):
    from llm.data.shards import ShardError
    from llm.data.tokenized import build_shards

    build_shards(cfg.data, cfg.data.corpus, TOK, tmp_path / "tok")
    shards, _, key = load_shards(dataclasses.replace(cfg.data, corpus=str(tmp_path / "tok")), TOK)
    cached = load_shards(cfg.data, TOK)[0]
    assert key.startswith("dir:") and sorted(shards) == ["train", "validation"]
    np.testing.assert_array_equal(shards["train"].tokens, cached["train"].tokens)

    class Wider(ByteTokenizer):
        vocab_size = 300

    with pytest.raises(ShardError, match=r"tokenized with a vocabulary of 259 ids.* has 300"):
        load_shards(dataclasses.replace(cfg.data, corpus=str(tmp_path / "tok")), Wider())
