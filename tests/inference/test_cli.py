"""`llm generate` prints the prompt and the engine's continuation (random-init config path)."""

from llm.cli import main
from llm.inference import StopCriteria

OVERRIDES = [
    "model.vocab_size=259",
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.d_ff=64",
    "model.max_seq_len=64",
    "model.pos_encoding=rope",
    "model.norm=rmsnorm",
    "model.activation=swiglu",
    "model.init_std=0.2",
    "train.seq_len=64",
    "data.tokenizer=byte",
]  # fmt: skip  (the TINY test model, initialised with the same seed)


def test_generate_prints_greedy_continuation(engine, capsys):
    tok = engine.tokenizer
    want = engine.generate([[tok.bos_id, *tok.encode("Hi")]],
                           stop=StopCriteria(6, (tok.eos_id,)))[0].text  # fmt: skip
    argv = ["generate", "--prompt", "Hi", "--temperature", "0", "--max-new-tokens", "6"]
    assert main(argv + OVERRIDES) == 0
    assert capsys.readouterr().out == "Hi" + want + "\n"


def test_generate_reports_bad_input(capsys):
    argv = ["generate", "--prompt", "x" * 80, "--temperature", "0"]
    assert main(argv + OVERRIDES) == 2
    assert "prompt has 81 tokens" in capsys.readouterr().err
