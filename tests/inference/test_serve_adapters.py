"""Several adapters on one base: `llm serve --adapter NAME=DIR` answers each request with its
adapter's weights (greedy tokens equal to the model merged by hand), unknown names are 404s,
and an adapter made for another base is refused at start-up.

Base: the tiny random transformers Llama (tests/interop/hf_models.py). Adapters: two made by
Hugging Face PEFT with random A and B, and one of our LoRA runs warm-started from the base.
"By hand" is independent of the code under test: PEFT's own `merge_and_unload` saved as a
plain Hugging Face model, and for our run `load_model`, which merges in the stacked layout.
"""

from __future__ import annotations

import argparse
import json
import threading

import numpy as np
import pytest

from llm.checkpoint import load_model
from llm.cli import main
from llm.commands.serve import adapter_bank
from llm.config.serve import ServeConfig
from llm.inference import Engine, StopCriteria
from llm.inference.server import Server
from tests.inference.test_server import request
from tests.interop.hf_models import make_hf_model, save_hf
from tests.peft.peft_adapters import make_peft_adapter
from tests.train.train_fixtures import SyntheticBatches, tiny_config

CFG = ServeConfig(port=0, max_concurrent=4, max_queue=16, max_prompt_tokens=16,
                  max_new_tokens=8, request_timeout_s=600)  # fmt: skip
PROMPT = [5, 17, 42, 99, 7]  # token ids of the tiny BPE vocabulary (300)
NEW = 8


def _lora_run(run_dir, base_dir):
    """A 2-step LoRA run on the base (a high learning rate, so that B moves visibly)."""
    from llm.train import train

    lora = ["peft.method=lora", "peft.rank=2", "optim.lr=0.05", "optim.warmup_steps=0"]
    cfg = tiny_config(run_dir, "train.steps=2", *lora, f"train.init_from={base_dir}")
    train(
        cfg,
        train_batches=SyntheticBatches(8, 16),
        val_batches=lambda: SyntheticBatches(8, 16, seed=1, limit=1),
    )
    return run_dir


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapters")
    base = save_hf(make_hf_model("llama"), d / "hf")
    return {
        "base": base,
        "a": make_peft_adapter(d / "a", seed=1, modules=["q_proj", "v_proj"]),
        "b": make_peft_adapter(d / "b", seed=2, modules=["o_proj", "up_proj", "down_proj"]),
        "run": _lora_run(d / "run", base),
    }


def _greedy(model_dir, params=None) -> str:
    """What the model in `model_dir` (or these params) generates greedily from PROMPT."""
    m = load_model(model_dir)
    engine = Engine(m.config.model, m.params if params is None else params, m.tokenizer,
                    max_len=32)  # fmt: skip
    return engine.generate([PROMPT], stop=StopCriteria(NEW, (m.tokenizer.eos_id,)))[0].text


@pytest.fixture(scope="module")
def references(dirs, tmp_path_factory):
    """name -> greedy text of the base with that adapter merged by hand (None: the base)."""
    from peft import PeftModel

    out = {None: _greedy(dirs["base"]), "run": _greedy(dirs["run"])}
    for name in ("a", "b"):
        merged = PeftModel.from_pretrained(make_hf_model("llama"), dirs[name]).merge_and_unload()
        out[name] = _greedy(save_hf(merged, tmp_path_factory.mktemp(f"merged_{name}")))
    return out


@pytest.fixture(scope="module")
def server(dirs):
    base = load_model(dirs["base"])
    args = argparse.Namespace(adapter=[(n, str(dirs[n])) for n in ("a", "b", "run")],
                              adapter_cache=None)  # fmt: skip
    bank = adapter_bank(args, base)
    srv = Server(Engine(base.config.model, bank.base, base.tokenizer, max_len=32), CFG, "hf",
                 bank)  # fmt: skip
    srv.start()
    yield srv
    srv.close()


def _complete(server, **fields):
    body = {"prompt": PROMPT, "max_tokens": NEW, "temperature": 0} | fields
    status, _, payload = request(server, "POST", "/v1/completions", body, timeout=600)
    return status, json.loads(payload)


@pytest.mark.slow  # builds the module's fixtures: a LoRA run, PEFT adapters, 4 reference models
def test_each_request_gets_its_adapter(server, references):
    assert len(set(references.values())) == 4, references  # the adapters all change the output
    asks = [("a", {"adapter": "a"}), ("b", {"model": "b"}), (None, {}), ("run", {"adapter": "run"}),
            (None, {"model": "hf"}), ("a", {"model": "a", "adapter": "a"})]  # fmt: skip
    answers = [None] * len(asks)

    def ask(i, fields):
        answers[i] = _complete(server, **fields)

    threads = [threading.Thread(target=ask, args=(i, f)) for i, (_, f) in enumerate(asks)]
    for t in threads:  # all at once: the scheduler must switch between adapters
        t.start()
    for t in threads:
        t.join()
    for (name, fields), (status, out) in zip(asks, answers, strict=True):
        assert status == 200, out
        assert out["choices"][0]["text"] == references[name], (name, fields)
    assert server.scheduler.steps > 0


def test_unknown_adapter_is_404_and_models_lists_adapters(server):
    status, out = _complete(server, adapter="nope")
    assert status == 404 and out["error"]["param"] == "adapter"
    assert "adapter 'nope' does not exist" in out["error"]["message"]
    assert "['a', 'b', 'run']" in out["error"]["message"]
    status, out = _complete(server, model="nope")
    assert status == 404 and out["error"]["code"] == "model_not_found"
    status, out = _complete(server, model="a", adapter="b")
    assert status == 400 and "give one of them" in out["error"]["message"]
    status, _, payload = request(server, "GET", "/v1/models")
    models = json.loads(payload)["data"]
    assert [m["id"] for m in models] == ["hf", "a", "b", "run"]
    assert all(m["parent"] == "hf" for m in models[1:])


def test_cached_adapter_shares_untargeted_buffers(server):
    """A merged copy costs only its targeted matrices: adapter a (q, v) reuses every other
    buffer of the base, and a second request finds it cached (no second merge)."""
    bank = server.scheduler.weights.__self__
    a = bank.weights("a")
    merges = bank.merges
    assert bank.weights("a") is a and bank.merges == merges
    for i, layer in enumerate(bank.base["blocks"]):
        assert a["blocks"][i]["attn"]["k"] is layer["attn"]["k"]
        assert a["blocks"][i]["mlp"] is layer["mlp"]
        assert not np.array_equal(a["blocks"][i]["attn"]["q"]["w"], layer["attn"]["q"]["w"])
    assert a["token_embed"] is bank.base["token_embed"]


def test_generate_with_adapter_equals_merged_by_hand(dirs, references, capsys):
    argv = ["generate", "--checkpoint", str(dirs["base"]), "--adapter", str(dirs["b"]),
            "--prompt", "The quick", "--temperature", "0", "--max-new-tokens", "6"]  # fmt: skip
    assert main(argv) == 0
    got = capsys.readouterr().out
    base = load_model(dirs["base"])
    from peft import PeftModel

    merged = PeftModel.from_pretrained(make_hf_model("llama"), dirs["b"]).merge_and_unload()
    m = load_model(save_hf(merged, dirs["base"].parent / "merged_for_generate"))
    ids = [base.tokenizer.bos_id, *base.tokenizer.encode("The quick")]
    engine = Engine(m.config.model, m.params, m.tokenizer)
    want = engine.generate([ids], stop=StopCriteria(6, (m.tokenizer.eos_id,)))[0].text
    assert got == "The quick" + want + "\n"


def test_mismatched_adapters_are_refused_at_start_up(dirs, tmp_path, capsys):
    """Qwen3's q_proj is 64 wide where the Llama's is 32: neither fits the other's base."""
    other = make_peft_adapter(tmp_path / "qwen3_adapter", modules=["q_proj"], arch="qwen3")
    argv = ["serve", "--checkpoint", str(dirs["base"]), "--port", "0"]
    assert main([*argv, "--adapter", f"x={other}"]) == 2
    err = capsys.readouterr().err
    assert str(other) in err and "q_proj.lora_B.weight has shape (64, 4)" in err
    qwen3 = save_hf(make_hf_model("qwen3"), tmp_path / "qwen3")
    run = dirs["run"]  # trained on the Llama base
    assert main(["serve", "--checkpoint", str(qwen3), "--adapter", f"y={run}"]) == 2
    assert f"adapter {run} does not fit the base model" in capsys.readouterr().err
    assert main([*argv, "--adapter", f"z={dirs['base']}"]) == 2
    assert "is a model directory, not an adapter" in capsys.readouterr().err
