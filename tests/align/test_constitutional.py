"""Constitutional self-critique (llm/align/constitutional.py) on the tiny byte model.

The random tiny model writes noise, so these tests check the plumbing the paper's method
rests on: the exact transcripts the engine receives (requests in the right turns, a later
round critiquing the previous revision), the preference records and their reader, the
counts of dropped pairs, and determinism by seed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import pytest

from llm.align.constitutional import (
    Settings,
    critique_turns,
    draw_principle,
    revision_turns,
    self_critique,
    write_records,
)
from llm.align.principles import DEFAULT_PRINCIPLES, Principle, load_principles
from llm.cli import main
from llm.config import load_config
from llm.data.preference import preference_rows
from llm.data.preference_records import read_preferences
from llm.inference import Engine
from llm.inference.engine import Completion
from llm.inference.sampling import SamplingParams
from llm.model import init_params
from llm.tokenizers.byte import ByteTokenizer
from llm.tokenizers.chat import apply_chat

OVERRIDES = [
    "model.vocab_size=259", "model.d_model=32", "model.n_layers=2", "model.n_heads=4",
    "model.n_kv_heads=2", "model.d_ff=64", "model.max_seq_len=256", "data.tokenizer=byte",
]  # fmt: skip
TINY = load_config(None, OVERRIDES).model  # the command's model too: its compiles are shared
SHORT = (
    Principle("kind", "Is it kind?", "Make it kind."),
    Principle("true", "Is it true?", "Make it true."),
    Principle("brief", "Is it brief?", "Make it brief."),
)  # short requests: the byte model's context is small
PROMPTS = [
    ([{"role": "user", "content": "Hi"}], "p.jsonl:1"),
    ([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Why?"}], "p:2"),
    ([{"role": "user", "content": "Go"}], "p.jsonl:3"),
]


class Recording(Engine):
    """The real engine, recording every batch of prompt ids it is asked to continue."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[list[list[int]]] = []

    def generate(self, prompts, params=None, stop=None):
        self.calls.append([list(p) for p in prompts])
        return super().generate(prompts, params, stop)


@pytest.fixture(scope="module")
def engine():
    return Recording(TINY, init_params(TINY, jax.random.key(0)), ByteTokenizer(), max_len=256)


@pytest.fixture(scope="module")
def two_rounds(engine):
    """(records, report, the engine's calls) of two rounds on PROMPTS, seed 3: compiled once."""
    engine.calls.clear()
    records, report = self_critique(engine, PROMPTS, SHORT, _settings(rounds=2))
    return records, report, list(engine.calls)


def _settings(**kw):
    base = dict(rounds=1, max_new_tokens=6, sampling=SamplingParams(temperature=1.0, seed=3))
    return Settings(**(base | kw))


def test_transcripts_put_each_request_in_its_own_turn():
    prompt = [{"role": "user", "content": "Q"}]
    p = Principle("x", "CRITIQUE?", "REVISE!")
    assert critique_turns(prompt, "A", p) == [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "CRITIQUE?"},
    ]
    assert revision_turns(prompt, "A", p, "C") == [
        *critique_turns(prompt, "A", p),
        {"role": "assistant", "content": "C"},
        {"role": "user", "content": "REVISE!"},
    ]


def test_the_engine_receives_the_rendered_transcripts_round_after_round(two_rounds):
    records, report, calls = two_rounds
    tok = ByteTokenizer()
    assert report.pairs == len(records) == 3  # at this seed nothing is empty or unchanged
    assert len(calls) == 1 + 2 * 2  # answers, then critiques and revisions per round
    for i, ((prompt, _), rec) in enumerate(zip(PROMPTS, records, strict=True)):
        chat = lambda turns: apply_chat(tok, turns, add_generation_prompt=True)  # noqa: E731
        want, current = [chat(prompt)], rec["rejected"]
        for r, done in enumerate(rec["rounds"]):
            p = draw_principle(SHORT, 3, i, r)
            assert done["principle"] == p.name
            want.append(chat(critique_turns(prompt, current, p)))
            want.append(chat(revision_turns(prompt, current, p, done["critique"])))
            current = done["revision"]  # the next round critiques this revision
        assert [call[i] for call in calls] == want
        assert rec["chosen"] == current and rec["critique"] == rec["rounds"][-1]["critique"]


def test_records_read_back_as_preference_pairs(two_rounds, tmp_path):
    records = two_rounds[0]
    write_records(tmp_path / "pairs.jsonl", records)
    lines = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert lines == records
    assert set(lines[0]) == {"prompt", "chosen", "rejected", "principle", "critique", "rounds",
                             "origin"}  # fmt: skip
    assert lines[0]["prompt"] == "Hi" and lines[1]["prompt"] == PROMPTS[1][0]  # text / messages
    pairs = read_preferences(str(tmp_path / "pairs.jsonl"))
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        (tuple(m), r["chosen"], r["rejected"]) for (m, _), r in zip(PROMPTS, records, strict=True)
    ]
    data = [f"data.corpus={tmp_path / 'pairs.jsonl'}", "data.format=preference",
            "loss.name=dpo", "train.seq_len=256", "data.val_fraction=0"]  # fmt: skip
    tok = ByteTokenizer()
    rows, report, _ = preference_rows(load_config(None, [*OVERRIDES, *data]), "train", tok)
    assert rows["inputs"].shape == (3, 2, 256) and report.skipped_overlong == 0
    side = lambda k, i: tok.decode(rows["targets"][k, i][rows["loss_mask"][k, i] > 0].tolist())  # noqa: E731
    # (chosen, rejected) as DPO trains them; the rows come in a seeded order
    trained = sorted((side(k, 0), side(k, 1)) for k in range(3))
    end = "<|end|>"
    want = sorted((tok.decode(tok.encode(r["chosen"])) + end,
                   tok.decode(tok.encode(r["rejected"])) + end) for r in records)  # fmt: skip
    assert trained == want  # the revision over the first answer, nothing else


def test_same_seed_same_pairs_other_seed_other_pairs(engine, two_rounds):
    again, _ = self_critique(engine, PROMPTS, SHORT, _settings(rounds=2))
    assert again == two_rounds[0]
    other_seed = _settings(rounds=2, sampling=SamplingParams(temperature=1.0, seed=4))
    other, _ = self_critique(engine, PROMPTS, SHORT, other_seed)
    assert [r["chosen"] for r in other] != [r["chosen"] for r in two_rounds[0]]


def test_seeds_and_principles_are_per_prompt_not_per_batch():
    runs = []
    for batch_size in (1, 2, 6):
        engine = Scripted()
        records, _ = self_critique(engine, [(m, o) for m, o in PROMPTS * 2], SHORT,
                                   _settings(rounds=2, batch_size=batch_size))  # fmt: skip
        runs.append((sorted(engine.seen), records))
    assert runs[0] == runs[1] == runs[2]
    seeds = [seed for _, seed in runs[0][0]]
    assert len(set(seeds)) == len(seeds)  # every (prompt, round, stage) has its own stream


class Scripted:
    """An engine double: replies by a rule on the last user turn, to force every drop."""

    def __init__(self, max_len: int = 256):
        self.tokenizer, self.max_len = ByteTokenizer(), max_len
        self.seen: list[tuple[str, int]] = []  # (transcript, sampling seed) of every turn

    def generate(self, prompts, params, stop):
        out = []
        for ids, p in zip(prompts, params, strict=True):
            self.seen.append((self.tokenizer.decode(ids), p.seed))
            text = self.tokenizer.decode(ids)
            last_user = text.rsplit("<|user|>", 1)[1]
            if last_user.startswith("empty"):
                reply = "  "  # whitespace only: empty once stripped
            elif last_user.startswith("Make"):  # a revision request
                reply = "same" if "same" in text else "" if "blank" in text else "better"
            elif last_user.startswith("cut"):
                out.append(Completion([1] * stop.max_new_tokens, "x" * 6, "length"))
                continue
            else:
                reply = "same" if "same" in text else "draft"
            out.append(Completion([1] * len(reply), reply, "stop"))
        return out


def test_dropped_pairs_are_counted_by_reason():
    texts = ["ok", "empty", "same", "blank", "cut", "x" * 300]
    prompts = [([{"role": "user", "content": c}], f"f:{k}") for k, c in enumerate(texts)]
    records, report = self_critique(Scripted(), prompts, SHORT, _settings(rounds=2))
    assert [r["origin"] for r in records] == ["f:0", "f:4"]
    assert (report.empty_answer, report.empty_revision, report.unchanged, report.too_long) == (
        1, 1, 1, 1,
    )  # fmt: skip
    assert report.prompts == 6 and report.pairs == 2
    assert report.cut_at_limit == 1  # "cut" answers at the limit: kept, but counted
    assert "dropped 4" in report.summary()


def test_principles_are_drawn_from_the_whole_constitution_by_seed():
    draws = [draw_principle(DEFAULT_PRINCIPLES, 0, i, 0).name for i in range(300)]
    assert set(draws) == {p.name for p in DEFAULT_PRINCIPLES}
    assert draws == [draw_principle(DEFAULT_PRINCIPLES, 0, i, 0).name for i in range(300)]
    assert draws != [draw_principle(DEFAULT_PRINCIPLES, 1, i, 0).name for i in range(300)]
    assert draws != [draw_principle(DEFAULT_PRINCIPLES, 0, i, 1).name for i in range(300)]


def test_the_shipped_constitution_file_is_the_default():
    path = Path(__file__).parents[2] / "configs" / "constitutions" / "default.yaml"
    assert load_principles(path) == DEFAULT_PRINCIPLES


def test_a_principles_file_loads_and_bad_ones_name_the_entry(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("- {name: a, critique: 'Is it kind?', revision: 'Make it kind.'}\n")
    assert load_principles(good) == (Principle("a", "Is it kind?", "Make it kind."),)
    for text, message in [
        ("[]", "non-empty list"),
        ("- {name: a, critique: '', revision: r}", "principle 0: 'critique' must be"),
        ("- {name: a, critique: c, revision: r, extra: 1}", "unknown keys \\['extra'\\]"),
        ("- {name: a, critique: c, revision: r}\n- {name: a, critique: c, revision: r}",
         "principle 1: name 'a' is used twice"),
    ]:  # fmt: skip
        good.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_principles(good)


def test_the_command_writes_pairs_and_reports_counts(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Hi", "answer": "ignored"}\n{"prompt": "Go"}\n{"prompt": "Q"}\n')
    rules = tmp_path / "c.json"
    rules.write_text(json.dumps([dataclasses.asdict(p) for p in SHORT]))
    out = tmp_path / "pairs.jsonl"
    argv = ["constitutional", "--prompts", str(prompts), "--out", str(out), "--principles",
            str(rules), "--max-new-tokens", "6", "--seed", "3", "--temperature", "1",
            "--no-progress", *OVERRIDES]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    n = len(out.read_text().splitlines())
    assert f"{n} pairs from 3 prompts" in err, err
    both = [*argv[: -len(OVERRIDES)], "--config", "configs/tiny.yaml", "--checkpoint", "x"]
    assert main(both) == 2
    assert "give one or the other" in capsys.readouterr().err
