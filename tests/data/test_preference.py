"""Preference data: every record format, completion-only masks, KTO rows, splits, batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm.config import load_config
from llm.data import make_batches
from llm.data.preference import (
    mismatched,
    preference_rows,
    read_preferences,
    render_completion,
)
from llm.data.sft import render
from llm.data.sources import SourceError
from llm.tokenizers import ByteTokenizer
from llm.tokenizers.chat import apply_chat
from tests.data.sft_fixtures import chatml_tokenizer, write_jsonl
from tests.interop.hf_models import CHATML

SYSTEM = {"role": "system", "content": "Be terse."}
ROWS = ("inputs", "positions", "segment_ids", "targets", "loss_mask")


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def toy_pairs(n: int) -> list[dict]:
    """`n` distinct text pairs; the chosen answer counts up, the rejected one down."""
    return [
        {"prompt": f"Count from {i}", "chosen": f"{i} {i + 1} {i + 2}", "rejected": f"{i} {i - 1}"}
        for i in range(n)
    ]


def config(corpus, *extra):
    return load_config(
        None,
        [
            f"data.corpus={corpus}",
            "data.format=preference",
            "data.tokenizer=byte",
            "data.val_fraction=0.25",
            "data.read_threads=0",
            "loss.name=dpo",
            "train.batch_size=4",
            "train.seq_len=96",
            *extra,
        ],
    )


def completions(rows, side):
    """Per row, the target ids under the loss mask of `side` (0 chosen / kept, 1 rejected)."""
    pairs = zip(rows["targets"][:, side], rows["loss_mask"][:, side], strict=True)
    return [t[m > 0].tolist() for t, m in pairs]


# ------------------------------------------------------------------------ formats, masks


def three_formats():
    """The same two pairs as text, as conversational messages and with an implicit prompt;
    the second has an earlier assistant turn in its prompt (context, never trained)."""
    history = [SYSTEM, user("Hi"), bot("Hello."), user("Capital of France?")]
    text = [{"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}]
    conv = [{"prompt": [user("Capital of France?")], "chosen": [bot("Paris.")],
             "rejected": [bot("Lyon.")]}]  # fmt: skip
    implicit = [{"chosen": [user("Capital of France?"), bot("Paris.")],
                 "rejected": [user("Capital of France?"), bot("Lyon.")]}]  # fmt: skip
    conv.append({"prompt": history, "chosen": [bot("Paris.")], "rejected": [bot("Rome.")]})
    implicit.append({"chosen": [*history, bot("Paris.")], "rejected": [*history, bot("Rome.")]})
    text.append(conv[1])  # a text record cannot carry a history: the same record again
    return text, conv, implicit


@pytest.mark.parametrize("template", ["byte", "chatml"])
def test_every_format_renders_the_same_rows(tmp_path, template):
    tok = ByteTokenizer() if template == "byte" else chatml_tokenizer(tmp_path / "model")
    extra = [] if template == "byte" else [f"data.tokenizer={tmp_path / 'model/tokenizer.json'}"]
    got = []
    for name, records in zip(("text", "conv", "implicit"), three_formats(), strict=True):
        path = write_jsonl(tmp_path / f"{name}.jsonl", records)
        cfg = config(path, "data.val_fraction=0", "train.seq_len=160", *extra)
        got.append(preference_rows(cfg, "train", tok)[0])
    for other in got[1:]:
        for key in got[0]:
            np.testing.assert_array_equal(got[0][key], other[key], err_msg=key)
    rows = got[0]
    end = "<|end|>" if template == "byte" else "<|im_end|>"
    # the masked targets are exactly the completion and its end-of-turn token: not the
    # earlier assistant turn "Hello." of the second record, not ChatML's trailing newline
    want = {(0, 0): "Paris.", (0, 1): "Lyon.", (1, 0): "Paris.", (1, 1): "Rome."}
    for side in (0, 1):
        for i, ids in enumerate(completions(rows, side)):
            if template == "byte":
                assert tok.decode(ids) == want[i, side] + end
            else:
                assert ids == [*tok.encode(want[i, side]), tok.token_to_id(end)]
    real = rows["segment_ids"] > 0
    assert (rows["positions"][real] == np.nonzero(real)[-1]).all()  # from 0, right-padded
    assert (real[..., :-1] >= real[..., 1:]).all()


def test_mask_is_sft_renders_last_assistant_turn(tmp_path):
    """The completion mask is exactly sft.render's mask of the last assistant turn."""
    tok = chatml_tokenizer(tmp_path / "model")
    history = [SYSTEM, user("Hi"), bot("Hello."), user("Capital of France?")]
    ex = render_completion(tok, tuple(history), "Paris.", "x.jsonl:1")
    sft = render(tok, [*history, bot("Paris.")])
    np.testing.assert_array_equal(ex.ids, sft.ids)
    last = np.zeros_like(sft.mask)
    last[len(apply_chat(tok, history, add_generation_prompt=True)) :] = True
    np.testing.assert_array_equal(ex.mask, sft.mask & last)
    # the generation prompt opens the turn with a hint the rendered conversation lacks
    hinted = CHATML.replace("'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\nA: '")
    assert hinted != CHATML
    bad = chatml_tokenizer(tmp_path / "hinted", hinted)
    with pytest.raises(ValueError, match=r"x\.jsonl:1: the chat template is not prefix-stable"):
        render_completion(bad, tuple(history), "Paris.", "x.jsonl:1")


# --------------------------------------------------------------------------- bad input


BAD = [
    ({"prompt": "q", "chosen": "a"}, "pair record is missing key 'rejected'"),
    ({"prompt": "q", "chosen": " ", "rejected": "b"}, "chosen is empty"),
    ({"prompt": "q", "chosen": "a", "rejected": "a"}, "chosen and rejected are the same"),
    ({"prompt": "q", "completion": "a", "label": 1}, "'label' is 1, not a boolean"),
    ({"prompt": "q", "completion": "a"}, "KTO record is missing key 'label'"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "1"}, "not a finite number"),
    ({"chosen": [bot("a")], "rejected": [bot("b")]}, "share no prompt"),
    ({"chosen": [user("q"), bot("a"), user("r"), bot("b")],
      "rejected": [user("q"), bot("x"), user("r"), bot("b")]}, "first differ at message 1"),
    ({"prompt": "q", "chosen": [user("a")], "rejected": "b"}, "after which chosen has \\['user'"),
    ({"prompt": "q", "chosen": "a", "completion": "b"}, "both pair keys"),
    ({"text": "q"}, "neither 'chosen'/'rejected'"),
    ({"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"},
     "prompt\\[0\\] role 'robot'"),
]  # fmt: skip


@pytest.mark.parametrize(("record", "message"), BAD)
def test_a_bad_record_names_its_file_and_line(tmp_path, record, message):
    path = write_jsonl(tmp_path / "p.jsonl", [*toy_pairs(2), record])
    with pytest.raises(SourceError, match=f"{path}:3: .*{message}"):
        read_preferences(str(path))


def test_mixing_pairs_and_unpaired_records_is_refused(tmp_path):
    kto = {"prompt": "q", "completion": "a", "label": True}
    path = write_jsonl(tmp_path / "p.jsonl", [*toy_pairs(2), kto])
    with pytest.raises(SourceError, match=f"{path}:3: record is unpaired .* {path}:1 is a pair"):
        read_preferences(str(path))


def test_wrong_loss_or_layout_is_refused(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", toy_pairs(4))
    with pytest.raises(ValueError, match=r"loss.name='causal_lm' does not read them"):
        preference_rows(config(pairs, "loss.name=causal_lm"), "train", ByteTokenizer())
    kto = [{"prompt": "q", "completion": f"a{i}", "label": i % 2 == 0} for i in range(4)]
    unpaired = write_jsonl(tmp_path / "k.jsonl", kto)
    with pytest.raises(ValueError, match=r"unpaired .* loss.name='dpo' needs chosen/rejected"):
        preference_rows(config(unpaired), "train", ByteTokenizer())


# ---------------------------------------------------------------------------------- KTO


def test_kto_rows_pair_each_prompt_with_another_records_completion(tmp_path):
    records = [
        {"prompt": f"Say {i}", "completion": f"answer {i}", "label": i % 3 != 0} for i in range(9)
    ]
    cfg = config(write_jsonl(tmp_path / "k.jsonl", records), "loss.name=kto", "data.val_fraction=0")
    tok = ByteTokenizer()
    rows, report, _ = preference_rows(cfg, "train", tok)
    assert rows["inputs"].shape == (9, 2, 96) and report.desirable == 6
    by_prompt = {f"Say {i}": (f"answer {i}", i % 3 != 0) for i in range(9)}
    seen = set()
    for r in range(9):
        own, other = (tok.decode(c[r]).removesuffix("<|end|>") for c in (
            completions(rows, 0), completions(rows, 1)))  # fmt: skip
        text = tok.decode(rows["inputs"][r, 0][rows["segment_ids"][r, 0] > 0].tolist())
        prompt = text[text.index("Say") : text.index("<|end|>")]
        assert by_prompt[prompt] == (own, bool(rows["label"][r]))
        assert other != own and other in {a for a, _ in by_prompt.values()}
        same = rows["loss_mask"][r, 1].argmax()  # the prompt prefix is shared, token for token
        np.testing.assert_array_equal(rows["inputs"][r, 0, :same], rows["inputs"][r, 1, :same])
        seen.add(other)
    assert len(seen) == 9  # a permutation of the completions: each one used once


def test_mismatch_is_seeded_and_avoids_the_own_pair():
    groups = [[0, 1], [2, 3], [4, 5], [6, 7]]  # a pair corpus under kto: two examples a record
    first = mismatched(groups, seed=0)
    assert first == mismatched(groups, seed=0)
    assert any(mismatched(groups, seed=s) != first for s in range(1, 5))
    for g in groups:
        assert not set(first[i] for i in g) & set(g)  # never its own nor its pair's completion
    assert sorted(first) == list(range(8))
    assert mismatched([[0, 1]], seed=0) == [1, 0]  # one record: the pair's other side


def test_pairs_under_kto_become_a_desirable_and_an_undesirable_example(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", toy_pairs(3))
    tok = ByteTokenizer()
    pairs, _, _ = preference_rows(config(path, "data.val_fraction=0"), "train", tok)
    kto, report, _ = preference_rows(
        config(path, "data.val_fraction=0", "loss.name=kto"), "train", tok
    )
    assert report.examples == 6 and report.desirable == 3
    kept = sorted(map(tuple, completions(kto, 0)))
    both = sorted(map(tuple, completions(pairs, 0) + completions(pairs, 1)))
    assert kept == both
    chosen = set(map(tuple, completions(pairs, 0)))
    assert [tuple(c) in chosen for c in completions(kto, 0)] == kto["label"].astype(bool).tolist()


# ------------------------------------------------------------------ overlong, split, margin


def test_overlong_rows_are_refused_or_counted(tmp_path):
    records = toy_pairs(6)
    records[2]["rejected"] = "x" * 120  # only one side too long: the whole pair goes
    path = write_jsonl(tmp_path / "p.jsonl", records)
    tok = ByteTokenizer()
    match = rf"1 of 6 preference rows are longer than train.seq_len=96 .* at {path}:3"
    with pytest.raises(ValueError, match=match):
        preference_rows(config(path, "data.val_fraction=0"), "train", tok)
    cfg = config(path, "data.val_fraction=0", "data.sft_overlong=skip")
    rows, report, _ = preference_rows(cfg, "train", tok)
    assert (report.records, report.examples, report.skipped_overlong) == (6, 5, 1)
    assert report.longest > 96 and rows["inputs"].shape == (5, 2, 96)
    assert report.completion_tokens == int(rows["loss_mask"].sum())


def test_held_out_split_is_by_record_and_seeded(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", toy_pairs(20))
    tok = ByteTokenizer()

    def chosen(cfg, split):
        return {tuple(c) for c in completions(preference_rows(cfg, split, tok)[0], 0)}

    train, val = chosen(config(path), "train"), chosen(config(path), "validation")
    assert (len(train), len(val)) == (15, 5) and not train & val
    assert chosen(config(path, "data.seed=1"), "validation") != val


def test_reward_rows_carry_the_record_margin_or_the_configured_one(tmp_path):
    records = toy_pairs(3)
    records[1]["margin"] = 2.5
    path = write_jsonl(tmp_path / "p.jsonl", records)
    cfg = config(path, "data.val_fraction=0", "loss.name=reward", "loss.margin=0.5")
    rows, _, _ = preference_rows(cfg, "train", ByteTokenizer())
    chosen = [ByteTokenizer().decode(c) for c in completions(rows, 0)]
    got = {c.split()[0]: float(m) for c, m in zip(chosen, rows["margin"], strict=True)}
    assert got == {"0": 0.5, "1": 2.5, "2": 0.5}
    dpo, _, _ = preference_rows(config(path, "data.val_fraction=0"), "train", ByteTokenizer())
    assert "margin" not in dpo


# -------------------------------------------------------------------------------- batches


LEAVES = {
    "dpo": set(ROWS) | {"weight"},
    "reward": set(ROWS) | {"weight", "margin"},
    "kto": set(ROWS) | {"weight", "label"},
}


@pytest.mark.parametrize("loss", sorted(LEAVES))
def test_batches_have_exactly_the_declared_leaves(tmp_path, loss):
    path = write_jsonl(tmp_path / "p.jsonl", toy_pairs(10))
    cfg = config(path, f"loss.name={loss}")
    tok = ByteTokenizer()
    batch = next(make_batches(cfg, "train", tok))
    assert set(batch) == LEAVES[loss]
    for key, value in batch.items():
        assert value.shape == ((4, 2, 96) if key in ROWS else (4,)), key
    val = list(make_batches(cfg, "validation", tok))
    n = len(preference_rows(cfg, "validation", tok)[0]["weight"])  # 3 records (6 under kto)
    assert len(val) == -(-n // 4)
    weights = np.concatenate([b["weight"] for b in val])
    assert weights.tolist() == [1.0] * n + [0.0] * (len(weights) - n)
    assert all(b["loss_mask"].sum(-1).min() > 0 for b in val)  # padding pairs stay scoreable


def test_make_batches_resumes_exactly_and_splits_over_processes(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", toy_pairs(16))
    cfg, tok = config(path), ByteTokenizer()
    it = make_batches(cfg, "train", tok)
    first = [next(it) for _ in range(2)]
    state = it.get_state()
    rest = [next(it) for _ in range(5)]  # 12 train pairs: 3 batches an epoch, so crosses two
    again = make_batches(cfg, "train", tok)
    again.set_state(json.loads(json.dumps(state)))
    for a, b in zip(rest, [next(again) for _ in range(5)], strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    halves = [[next(i) for _ in range(2)] for i in (make_batches(cfg, "train", tok, p, 2)
                                                     for p in (0, 1))]  # fmt: skip
    for k, whole in enumerate(first):
        for key in whole:
            joined = np.concatenate([halves[0][k][key], halves[1][k][key]])
            np.testing.assert_array_equal(joined, whole[key])
    with pytest.raises(ValueError, match="cannot restore data iterator: data="):
        make_batches(config(path, "loss.name=kto"), "train", tok).set_state(state)


def test_an_edited_corpus_is_read_again(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", toy_pairs(6))
    cfg, tok = config(path, "data.val_fraction=0"), ByteTokenizer()
    first = preference_rows(cfg, "train", tok)
    assert preference_rows(cfg, "train", tok) is first  # kept: validation asks every eval
    write_jsonl(path, toy_pairs(7))
    _, report, key = preference_rows(cfg, "train", tok)
    assert (first[1].examples, report.examples) == (6, 7) and key != first[2]


def test_kto_counts_a_row_whose_mismatched_side_is_too_long(tmp_path):
    records = [{"prompt": f"Say {i}", "completion": f"answer {i}", "label": True} for i in range(5)]
    records[2]["completion"] = "y" * 80  # its own row and the row that borrows it are too long
    path = write_jsonl(tmp_path / "k.jsonl", records)
    cfg = config(path, "loss.name=kto", "data.val_fraction=0", "data.sft_overlong=skip")
    rows, report, _ = preference_rows(cfg, "train", ByteTokenizer())
    assert (report.examples, report.skipped_overlong) == (3, 2)
    assert not any("y" * 80 in ByteTokenizer().decode(r) for r in rows["inputs"].reshape(6, -1))
