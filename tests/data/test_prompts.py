"""RL prompt data (llm/data/prompts.py) and `llm data arithmetic`."""

from __future__ import annotations

import json
import operator

import pytest

from llm.cli import main
from llm.config import load_config
from llm.data.prompts import PromptOrder, arithmetic_records, load_prompts, parse_record
from llm.data.sources import SourceError
from llm.tokenizers.byte import ByteTokenizer
from llm.tokenizers.chat import apply_chat


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _cfg(corpus, *overrides):
    return load_config(None, [f"data.corpus={corpus}", "data.format=prompts", *overrides])


def test_prompts_render_with_the_generation_prompt(tmp_path):
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}]
    path = _write(tmp_path / "p.jsonl", [
        {"prompt": "What is 1 + 2?", "answer": "3"},
        {"messages": messages, "answer": 4},
        {"prompt": "No answer here"},
    ])  # fmt: skip
    tok = ByteTokenizer()
    cfg = _cfg(path, "data.val_fraction=0")
    prompts = sorted(load_prompts(cfg, "train", tok), key=lambda p: p.origin)
    assert [p.answer for p in prompts] == ["3", "4", None]
    assert [p.text for p in prompts] == ["What is 1 + 2?", "2+2?", "No answer here"]
    assert prompts[1].messages == tuple(messages)
    want = apply_chat(tok, messages, add_generation_prompt=True)
    assert list(prompts[1].ids) == want
    # exactly the prefix SFT data puts before the trained assistant tokens
    full = apply_chat(tok, [*messages, {"role": "assistant", "content": "4"}])
    assert full[: len(want)] == want


def test_held_out_split_is_disjoint_and_seeded(tmp_path):
    path = _write(tmp_path / "a.jsonl", arithmetic_records(100, seed=0))
    tok = ByteTokenizer()
    cfg = _cfg(path, "data.val_fraction=0.1")
    train, val = load_prompts(cfg, "train", tok), load_prompts(cfg, "validation", tok)
    assert len(train) == 90 and len(val) == 10
    assert not {p.origin for p in train} & {p.origin for p in val}
    again = load_prompts(cfg, "validation", tok)
    assert [p.origin for p in again] == [p.origin for p in val]
    with pytest.raises(ValueError, match="leaves no validation prompt"):
        load_prompts(_cfg(path, "data.val_fraction=0"), "validation", tok)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "a", "messages": []}, "exactly one of"),
        ({"text": "a"}, "exactly one of"),
        ({"prompt": ""}, "non-empty string"),
        ({"prompt": "a", "answer": [1]}, "'answer' is list"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
         "last message is the assistant's"),
        ({"messages": [{"role": "wizard", "content": "q"}]}, "role 'wizard'"),
    ],
)  # fmt: skip
def test_bad_records_name_the_line(record, message):
    with pytest.raises(SourceError, match=message):
        parse_record(record, "f.jsonl:7")


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(SourceError, match=r"bad\.jsonl:2: invalid JSON"):
        load_prompts(_cfg(path, "data.val_fraction=0"), "train", ByteTokenizer())


def test_prompt_order_is_a_function_of_the_iteration(tmp_path):
    path = _write(tmp_path / "a.jsonl", arithmetic_records(10, seed=1))
    prompts = load_prompts(_cfg(path, "data.val_fraction=0"), "train", ByteTokenizer())
    order = PromptOrder(prompts, seed=3)
    first_epoch = [p.origin for k in range(5) for p in order.take(k, 2)]
    assert sorted(first_epoch) == sorted(p.origin for p in prompts)  # each once per epoch
    fresh = PromptOrder(prompts, seed=3)
    assert [p.origin for p in fresh.take(7, 3)] == [p.origin for p in order.take(7, 3)]
    assert [p.origin for p in PromptOrder(prompts, 4).take(0, 10)] != first_epoch


def test_arithmetic_records_are_distinct_and_correct():
    records = arithmetic_records(300, seed=0, max_operand=20, ops=("+", "-", "*"))
    assert len({r["prompt"] for r in records}) == 300
    for r in records:
        a, op, b = r["prompt"].removeprefix("What is ").removesuffix("?").split()
        assert int(r["answer"]) == {"+": operator.add, "-": operator.sub, "*": operator.mul}[op](
            int(a), int(b)
        )
    with pytest.raises(ValueError, match="make only 4"):
        arithmetic_records(5, seed=0, max_operand=1, ops=("+",))
    with pytest.raises(ValueError, match="must be one of"):
        arithmetic_records(5, seed=0, ops=("/",))


def test_llm_data_arithmetic_command(tmp_path, capsys):
    assert main(["data", "arithmetic", "--out", str(tmp_path), "--n", "20", "--seed", "2"]) == 0
    assert "data.format=prompts" in capsys.readouterr().out
    lines = (tmp_path / "arithmetic.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == arithmetic_records(20, seed=2)
