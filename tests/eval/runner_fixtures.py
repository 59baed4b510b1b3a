"""A tiny byte-level model and small task files for the runner's tests (tests/eval/test_runner.py,
test_multiple_choice.py, test_results.py and tests/commands/test_eval_tasks.py)."""

from __future__ import annotations

import json
from pathlib import Path

import jax

from llm.checkpoint import LoadedModel
from llm.config import load_config
from llm.model import init_params
from llm.tokenizers import ByteTokenizer

MAX_LEN = 64
TINY = ["model.vocab_size=320", "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
        "model.d_ff=64", f"model.max_seq_len={MAX_LEN}", "model.init_std=0.2",
        f"train.seq_len={MAX_LEN}", "data.tokenizer=byte"]  # fmt: skip
_PARAMS: dict = {}


def tiny_model() -> LoadedModel:
    """A 2-layer, 32-wide random model over bytes (init_std 0.2: predictions far from
    uniform, so choices rarely tie); params initialised once per session."""
    cfg = load_config(None, TINY)
    if "params" not in _PARAMS:
        _PARAMS["params"] = init_params(cfg.model, jax.random.key(0))
    return LoadedModel(cfg, _PARAMS["params"], ByteTokenizer(), 0, "imported", Path("tiny"))


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


MC_RECORDS = [
    {"id": "q1", "query": "Which play has a ghost?\nAnswer:",
     "choices": ["Hamlet", "Twelfth Night", "As You Like It"], "gold": 0, "domain": "plays"},
    {"id": "q2", "query": "Who wrote Paradise Lost?\nAnswer:",
     "choices": ["Milton", "Shakespeare"], "gold": 0, "domain": "poets"},
    {"id": "q3", "query": "In the beginning God created the\nAnswer:",
     "choices": ["heaven", "sea", "ark", "light"], "gold": 0, "domain": "bible"},
    {"id": "q4", "query": "Which play has a storm?\nAnswer:",
     "choices": ["Othello", "The Tempest"], "gold": 1, "domain": "plays"},
    {"id": "q5", "query": "Let there be\nAnswer:",
     "choices": ["light", "darkness", "water"], "gold": 0, "domain": "bible"},
]  # fmt: skip

GEN_RECORDS = [
    {"id": "g1", "prompt": "Q: Name a play.\nA:", "references": ["Hamlet", "Macbeth"]},
    {"id": "g2", "prompt": "Q: Who wrote it?\nA:", "references": ["Shakespeare"],
     "until": ["\n"]},
    {"id": "g3", "prompt": "To be or not", "references": ["to be"]},
]  # fmt: skip

PPL_RECORDS = [
    {"text": "Now is the winter of our discontent", "domain": "plays"},
    {"text": "Of Man's first disobedience, and the fruit\nOf that forbidden tree",
     "domain": "poems"},
    {"text": "  All the world's a stage, and all the men and women merely players; " * 2,
     "domain": "plays"},
]  # fmt: skip
