"""`llm generate` prints the prompt and the engine's continuation (random-init config path)."""

from llm.cli import main
from llm.inference import StopCriteria
from llm.tokenizers.byte import ByteTokenizer

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


class _NoStdin:
    def read(self, *_):
        raise AssertionError("read stdin although --prompt was given")

    readline = read

    def isatty(self) -> bool:
        return False


def test_chat_with_prompt_answers_one_turn_without_reading_stdin(engine, capsys, monkeypatch):
    from llm.inference.loading import chat_stops
    from llm.tokenizers.chat import apply_chat

    tok = engine.tokenizer
    ids = apply_chat(tok, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    stop_ids, stop_strings = chat_stops(tok)
    want = engine.generate([ids], stop=StopCriteria(5, stop_ids, stop_strings))[0].text
    monkeypatch.setattr("sys.stdin", _NoStdin())
    monkeypatch.setattr("builtins.input", _NoStdin().read)
    argv = ["generate", "--chat", "--prompt", "Hi", "--temperature", "0", "--max-new-tokens", "5"]
    assert main(argv + OVERRIDES) == 0
    assert capsys.readouterr().out == want + "\n"


def test_default_max_new_tokens_fits_the_context(tiny_params, capsys):
    """No --max-new-tokens: 128 tokens, or what the 64-token context leaves (61 here)."""
    from llm.inference import Engine
    from tests.inference.conftest import TINY

    argv = ["generate", "--prompt", "Hi", "--temperature", "0"]
    assert main(argv + OVERRIDES) == 0
    engine = Engine(TINY, tiny_params, ByteTokenizer())
    tok = engine.tokenizer
    want = engine.generate([[tok.bos_id, *tok.encode("Hi")]],
                           stop=StopCriteria(61, (tok.eos_id,)))[0].text  # fmt: skip
    assert capsys.readouterr().out == "Hi" + want + "\n"
