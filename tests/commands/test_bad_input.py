"""Every command fails the same clean way on bad input: exit status 2, one line on stderr
naming the file, key or argument, and no traceback (docs/reliability.md, "Bad input").

Each row is what a hostile user would type. Rows run in-process through `llm.cli.main`; a few
run `llm`, `train.py` and `eval.py` as subprocesses to cover the real entry points.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llm.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.vocab_size=259", "model.d_model=32", "model.n_layers=2", "model.n_heads=4",
        "model.n_kv_heads=2", "model.d_ff=64", "model.max_seq_len=64", "train.seq_len=64",
        "data.tokenizer=byte"]  # fmt: skip
BAD_YAML = "model:\n  n_layers: [\n"


def _model_dir(tmp: Path, d_model: int | None = None, config_text: str | None = None) -> Path:
    """An `llm convert`-style directory of the TINY model; `d_model` in config.yaml may lie."""
    import jax
    import orbax.checkpoint as ocp

    from llm.config import load_config, save_config
    from llm.model import init_params

    out = tmp / "model"
    cfg = load_config(None, TINY)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / "params", init_params(cfg.model, jax.random.key(0)))
    checkpointer.wait_until_finished()
    if d_model is not None:
        cfg = load_config(None, [*TINY, f"model.d_model={d_model}"])
    save_config(cfg, out / "config.yaml")
    if config_text is not None:
        (out / "config.yaml").write_text(config_text)
    return out


# (id, argv with {tmp} for the test's folder, files to write, text the error line must hold)
ROWS = [
    ("yaml syntax", ["config", "--config", "{tmp}/bad.yaml"], {"bad.yaml": BAD_YAML},
     "bad.yaml:3:1: invalid YAML"),
    ("unknown key", ["model", "--config", "{tmp}/k.yaml"], {"k.yaml": "model:\n  n_layerz: 2\n"},
     "model.n_layerz: unknown key; did you mean 'n_layers'?"),
    ("missing config", ["config", "--config", "{tmp}/none.yaml"], {}, "none.yaml does not exist"),
    ("bad override type", ["config", "model.n_layers=four"], {}, "model.n_layers: Input should"),
    ("bad override yaml", ["config", "model.n_layers=["], {},
     "override 'model.n_layers=[': the value is not valid YAML"),
    ("override without =", ["config", "n_layers"], {}, "not of the form section.key=value"),
    ("no command", [], {}, "the following arguments are required: COMMAND"),
    ("unknown command", ["trian"], {}, "invalid choice: 'trian'"),
    ("plot: no run", ["plot", "{tmp}/run"], {}, "run/metrics.jsonl does not exist"),
    ("plot: bad metrics", ["plot", "{tmp}"], {"metrics.jsonl": '{"step": 1}\nnot json\n'},
     "metrics.jsonl:2: not JSON"),
    ("eval: no run", ["eval", "--checkpoint", "{tmp}/none"], {}, "none: no such directory"),
    ("eval: not a model", ["eval", "--checkpoint", "{tmp}"], {"x.txt": ""},
     "is not a model directory"),
    ("eval: --batches 0", ["eval", "--checkpoint", "{tmp}", "--batches", "0"], {},
     "argument --batches: must be >= 1, got 0"),
    ("eval: unused --prompt", ["eval", "--checkpoint", "{tmp}", "--samples", "0", "--prompt", "x"],
     {}, "--prompt is the prompt of the samples, and --samples 0 prints none"),
    ("generate: no model", ["generate", "--prompt", "hi"], {}, "give --checkpoint RUN_DIR"),
    ("generate: two models", ["generate", "--checkpoint", "{tmp}", "--config", "c.yaml"], {},
     "give one or the other"),
    ("generate: --step alone", ["generate", "--step", "3", *TINY], {}, "--step picks a checkpoint"),
    ("generate: max tokens -1", ["generate", "--max-new-tokens", "-1", *TINY], {},
     "argument --max-new-tokens: must be >= 1, got -1"),
    ("generate: top-p 2", ["generate", "--top-p", "2", *TINY], {}, "--top-p 2.0 must be in (0, 1]"),
    ("generate: temperature -1", ["generate", "--temperature", "-1", *TINY], {},
     "--temperature -1.0 must be >= 0"),
    ("generate: temperature nan", ["generate", "--temperature", "nan", *TINY], {},
     "argument --temperature: must be a finite number"),
    ("generate: top-k -3", ["generate", "--top-k", "-3", *TINY], {}, "--top-k -3 must be >= 0"),
    ("generate: --system alone", ["generate", "--system", "terse", *TINY], {},
     "--system is for --chat"),
    ("generate: beams ignore sampling", ["generate", "--num-beams", "2", "--top-p", "0.5", *TINY],
     {}, "beam search is deterministic: --top-p would be ignored"),
    ("generate: length penalty alone", ["generate", "--length-penalty", "2", *TINY], {},
     "--length-penalty needs --num-beams"),
    ("generate: samples in chat", ["generate", "--chat", "--num-samples", "2", *TINY], {},
     "--num-samples applies to sampled completions"),
    ("generate: beyond context", ["generate", "--prompt", "hi", "--max-new-tokens", "100", *TINY],
     {}, "prompt has 3 tokens; with --max-new-tokens 100 that exceeds the model's context of 64"),
    ("serve: bad port", ["serve", "--port", "70000", *TINY], {}, "argument --port: must be in"),
    ("serve: model override", ["serve", "--checkpoint", "{tmp}", "model.n_layers=4"], {},
     "model.n_layers=4: with --checkpoint only serve.* overrides apply"),
    ("tokenizer: no file", ["tokenizer", "train", "{tmp}/no.txt", "--vocab-size", "300", "--out",
                            "{tmp}/t"], {}, "'{tmp}/no.txt' is neither a file nor a built-in"),
    ("tokenizer: vocab too big", ["tokenizer", "train", "{tmp}/a.txt", "--algo", "spm-bpe",
                                  "--vocab-size", "400", "--out", "{tmp}/t"],
     {"a.txt": "hello world\nthe quick brown fox\n"}, "vocab_size=400 is more than this text "
     "supports (at most 334): lower it or give more text"),
    ("tokenizer: unused option", ["tokenizer", "train", "{tmp}/a.txt", "--algo", "bpe",
                                  "--character-coverage", "0.9", "--vocab-size", "300", "--out",
                                  "{tmp}/t"], {"a.txt": "x\n"},
     "--character-coverage applies to spm-bpe, spm-unigram and unigram, not bpe"),
    ("tokenizer: missing file", ["tokenizer", "encode", "--tokenizer", "{tmp}/t.json", "hi"], {},
     "tokenizer file {tmp}/t.json does not exist"),
    ("tokenizer: id out of range", ["tokenizer", "decode", "--tokenizer", "byte", "300"], {},
     "ids out of range [0, 259) of byte: [300]"),
    ("train: unused --devices", ["train", "--devices", "4"], {}, "--devices plans memory"),
    ("train: bad value", ["train", "--dry_run", "model.n_layers=-1"], {},
     "model.n_layers: must be positive, got -1"),
    ("data: no corpus", ["data", "report", "data.corpus={tmp}/none", "data.cache_dir={tmp}"], {},
     "none: no input files found"),
    ("convert: no gguf", ["convert", "from-gguf", "{tmp}/m.gguf", "{tmp}/out"], {},
     "m.gguf: No such file or directory"),
    ("convert: no run", ["convert", "to-hf", "{tmp}/run", "{tmp}/out"], {},
     "run: no such directory"),
]  # fmt: skip


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of `llm argv`, in-process."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors exit
        code = exit_.code
    return code, capsys.readouterr().err


def check_one_line(code: int, err: str, want: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert want in err, err
    assert err.startswith("llm"), err  # names the command: "llm generate: error: ..."


@pytest.mark.parametrize(("argv", "files", "want"), [r[1:] for r in ROWS],
                         ids=[r[0] for r in ROWS])  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(argv, files, want, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing a row does may touch the checkout
    monkeypatch.setattr(sys, "stdin", _NoStdin())
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    check_one_line(*run_cli(argv, capsys), want.replace("{tmp}", str(tmp_path)))


class _NoStdin:
    """A command that waits for stdin instead of failing would hang: make it fail loudly."""

    def read(self, *_):
        raise AssertionError("the command read stdin")

    readline = read

    def isatty(self) -> bool:
        return False


def test_checkpoint_mismatch_names_the_directory_and_the_key(tmp_path, capsys):
    model = _model_dir(tmp_path, d_model=64)
    code, err = run_cli(["generate", "--checkpoint", str(model), "--prompt", "hi"], capsys)
    check_one_line(code, err, "checkpoint does not match the config")
    assert str(model / "params") in err and "config.yaml beside it" in err
    assert "blocks.attn.k.w: checkpoint has shape (2, 32, 2, 8) float32, config expects" in err


def test_broken_config_in_a_model_directory_names_the_file(tmp_path, capsys):
    model = _model_dir(tmp_path, config_text=BAD_YAML)
    code, err = run_cli(["eval", "--checkpoint", str(model)], capsys)
    check_one_line(code, err, f"{model / 'config.yaml'}:3:1: invalid YAML")


def test_debug_shows_the_traceback(tmp_path):
    from llm.config import ConfigError

    (tmp_path / "bad.yaml").write_text(BAD_YAML)
    for argv in (["--debug", "config", "--config", str(tmp_path / "bad.yaml")],
                 ["config", "--config", str(tmp_path / "bad.yaml"), "--debug"]):  # fmt: skip
        with pytest.raises(ConfigError, match="invalid YAML"):
            main(argv)


@pytest.mark.parametrize("argv", [
    ["-m", "llm.cli", "config", "--config", "{tmp}/bad.yaml"],
    ["train.py", "--config", "{tmp}/bad.yaml", "--dry_run"],
    ["eval.py", "--checkpoint", "{tmp}/no-run"],
])  # fmt: skip
def test_entry_points_fail_the_same_way(argv, tmp_path):
    (tmp_path / "bad.yaml").write_text(BAD_YAML)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    want = "no-run: no such directory" if "eval.py" in argv else "bad.yaml:3:1: invalid YAML"
    check_one_line(proc.returncode, proc.stderr, want)


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`llm config | head -0`: the write fails with EPIPE; the command ends quietly (141)."""
    proc = subprocess.Popen([sys.executable, "-m", "llm.cli", "config"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # before the child (seconds to import) writes anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and err == ""


def test_serve_overrides_apply_to_a_checkpoint_config_and_are_validated():
    from llm.commands.serve import with_serve_overrides
    from llm.config import Config, ConfigError

    cfg = with_serve_overrides(Config(), ["serve.max_concurrent=3", "serve.port=0"])
    assert (cfg.serve.max_concurrent, cfg.serve.port) == (3, 0)
    assert cfg.model == Config().model
    with pytest.raises(ConfigError, match="max_queue"):
        with_serve_overrides(Config(), ["serve.max_queue=0"])
