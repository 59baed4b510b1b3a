"""SFT data: the assistant mask token for token, records, packing, over-long examples, batches."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from llm.config import load_config
from llm.data import make_batches
from llm.data.sft import Example, pack_examples, read_records, render, sft_rows
from llm.data.sources import SourceError
from llm.tokenizers import ByteTokenizer, load_tokenizer
from tests.data.sft_fixtures import CONVERSATION, chatml_tokenizer, toy_chats, write_jsonl
from tests.interop.hf_models import CHATML


def chatml_oracle(tok, messages):
    """ChatML by hand: <|im_start|>role\\n | content <|im_end|> | \\n; the middle is trained."""
    start, end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    ids, mask = [], []
    for m in messages:
        head = [start, *tok.encode(m["role"] + "\n")]
        body = [*tok.encode(m["content"]), end]
        tail = tok.encode("\n")
        ids += head + body + tail
        mask += [False] * len(head) + [m["role"] == "assistant"] * len(body) + [False] * len(tail)
    return ids, mask


def byte_oracle(tok, messages):
    """Our template by hand: BOS, then <|role|> | content <|end|>; the second part trained."""
    ids, mask = [tok.bos_id], [False]
    for m in messages:
        head = tok.encode(f"<|{m['role']}|>")
        body = tok.encode(m["content"] + "<|end|>")
        ids += head + body
        mask += [False] * len(head) + [m["role"] == "assistant"] * len(body)
    return ids, mask


def test_mask_equals_assistant_spans_of_chatml(tmp_path):
    tok = chatml_tokenizer(tmp_path / "model")
    ex = render(tok, CONVERSATION)
    ids, mask = chatml_oracle(tok, CONVERSATION)
    assert ex.ids.tolist() == ids
    assert ex.mask.tolist() == mask
    assert sum(mask) == len(tok.encode("Paris.")) + len(tok.encode("Jumps over the lazy dog.")) + 2


def test_mask_equals_assistant_spans_of_our_template():
    tok = ByteTokenizer()
    ex = render(tok, CONVERSATION)
    ids, mask = byte_oracle(tok, CONVERSATION)
    assert ex.ids.tolist() == ids
    assert ex.mask.tolist() == mask
    assert tok.decode(ex.ids[ex.mask].tolist()) == "Paris.<|end|>Jumps over the lazy dog.<|end|>"


def test_a_template_that_is_not_prefix_stable_is_refused(tmp_path):
    # closes the whole conversation with a token, so an earlier turn renders differently alone
    closing = CHATML + "{% if not add_generation_prompt %}<|endoftext|>{% endif %}"
    tok = chatml_tokenizer(tmp_path / "model", closing)
    with pytest.raises(ValueError, match=r"x\.jsonl:3: the chat template is not prefix-stable"):
        render(tok, CONVERSATION, "x.jsonl:3")


def test_records_and_instruction_records(tmp_path):
    records = [
        {"messages": CONVERSATION},
        {"instruction": "Add.", "input": "2 + 2", "output": "4"},
        {"instruction": "Greet.", "output": "Hi"},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    got = read_records(str(path))
    assert [where for _, where in got] == [f"{path}:{i}" for i in (1, 2, 3)]
    assert got[0][0] == CONVERSATION
    assert got[1][0] == [
        {"role": "user", "content": "Add.\n\n2 + 2"},
        {"role": "assistant", "content": "4"},
    ]
    assert got[2][0][0] == {"role": "user", "content": "Greet."}


@pytest.mark.parametrize(
    "record, message",
    [
        ({"instruction": "Add."}, "instruction record is missing key 'output'"),
        ({"prompt": "x"}, "neither 'messages' nor 'instruction'/'output'"),
        ({"messages": [{"role": "user"}]}, r"messages\[0\] is missing key 'content'"),
        ({"messages": [{"role": "bot", "content": "x"}]}, r"role 'bot' is not one of"),
        ({"messages": [{"role": "user", "content": "x"}]}, "no assistant message"),
        ([1, 2], "expected a JSON object, got list"),
    ],
)
def test_a_bad_record_names_its_line_and_key(tmp_path, record, message):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}, record])
    with pytest.raises(SourceError, match=f"chat.jsonl:2: .*{message}"):
        read_records(str(path))


def random_examples(n: int, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(2, 12))
        ids = rng.integers(0, 200, k).astype(np.int32)
        out.append(Example(ids, rng.random(k) < 0.5, f"ex{i}"))
    return out


def test_packing_keeps_examples_whole_and_apart():
    examples, L = random_examples(40), 16
    rows = pack_examples(examples, L, pad_id=255)
    seen = []
    for row in rows:
        segments = row["segment_ids"]
        for s in range(1, segments.max() + 1):
            at = np.flatnonzero(segments == s)
            assert (np.diff(at) == 1).all()  # contiguous
            ex = examples[len(seen)]
            assert row["inputs"][at].tolist() == ex.ids.tolist()
            assert row["positions"][at].tolist() == list(range(len(at)))
            assert row["targets"][at[:-1]].tolist() == ex.ids[1:].tolist()
            assert row["loss_mask"][at].tolist() == [*ex.mask[1:], False]  # no cross-example target
            seen.append(ex.origin)
        pad = segments == 0
        assert (row["inputs"][pad] == 255).all() and not row["loss_mask"][pad].any()
        assert pad.sum() < L and (np.diff(pad.astype(int)) >= 0).all()  # padding only at the end
    assert seen == [ex.origin for ex in examples]
    # next fit: a row is closed only when the next example does not fit
    for row, nxt in itertools.pairwise(rows):
        first_next = int((nxt["segment_ids"] == 1).sum())
        assert int((row["segment_ids"] > 0).sum()) + first_next > L


def chat_config(corpus, *overrides):
    return load_config(
        None,
        [
            f"data.corpus={corpus}",
            "data.format=chat",
            "data.tokenizer=byte",
            "data.val_fraction=0.25",
            "data.read_threads=0",
            "train.batch_size=4",
            "train.seq_len=96",
            *overrides,
        ],
    )


def test_overlong_examples_are_refused_or_counted(tmp_path):
    records = toy_chats(8)
    records[3] = {"messages": [{"role": "user", "content": "x" * 120}, *CONVERSATION[2:3]]}
    records[5] = {"instruction": "y" * 110, "output": "z"}
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    tok = ByteTokenizer()
    cfg = chat_config(path, "data.val_fraction=0", "train.seq_len=96")
    with pytest.raises(ValueError, match=r"2 of 8 SFT examples are longer than train.seq_len=96"):
        sft_rows(cfg, "train", tok)
    rows, report, _ = sft_rows(
        chat_config(path, "data.val_fraction=0", "train.seq_len=96", "data.sft_overlong=skip"),
        "train",
        tok,
    )
    assert report.skipped_overlong == 2 and report.examples == 6
    assert sum(int(r["segment_ids"].max()) for r in rows) == 6
    assert report.longest > 96 and report.tokens == sum(
        int((r["segment_ids"] > 0).sum()) for r in rows
    )


def examples_in(rows) -> set[tuple[int, ...]]:
    return {
        tuple(row["inputs"][row["segment_ids"] == s])
        for row in rows
        for s in range(1, row["segment_ids"].max() + 1)
    }


def test_held_out_split_is_by_example_and_seeded(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", toy_chats(20))
    tok = ByteTokenizer()
    train, rt, _ = sft_rows(chat_config(path), "train", tok)
    val, rv, _ = sft_rows(chat_config(path), "validation", tok)
    every = {tuple(render(tok, m).ids) for m, _ in read_records(str(path))}
    assert (rt.examples, rv.examples) == (15, 5)
    assert examples_in(train) | examples_in(val) == every
    assert not examples_in(train) & examples_in(val)
    other, _, _ = sft_rows(chat_config(path, "data.seed=1"), "validation", tok)
    assert examples_in(other) != examples_in(val)


def take(it, n):
    return [next(it) for _ in range(n)]


def test_make_batches_resumes_exactly_and_splits_over_processes(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", toy_chats(30))
    cfg, tok = chat_config(path), ByteTokenizer()
    it = make_batches(cfg, "train", tok)
    first = take(it, 2)
    state = it.get_state()
    rest = take(it, 6)  # crosses an epoch: 22 train examples pack into 20 rows, 5 batches
    again = make_batches(cfg, "train", tok)
    again.set_state(state)
    for a, b in zip(rest, take(again, 6), strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    halves = [take(make_batches(cfg, "train", tok, p, 2), 2) for p in (0, 1)]
    for k, whole in enumerate(first):
        for key in whole:
            joined = np.concatenate([halves[0][k][key], halves[1][k][key]])
            np.testing.assert_array_equal(joined, whole[key])
    assert set(first[0]) == {"inputs", "targets", "positions", "segment_ids", "loss_mask"}
    changed = write_jsonl(tmp_path / "other.jsonl", toy_chats(31))
    with pytest.raises(ValueError, match="cannot restore data iterator: data="):
        make_batches(chat_config(changed), "train", tok).set_state(state)


def test_validation_is_one_padded_pass(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", toy_chats(30))
    cfg, tok = chat_config(path), ByteTokenizer()
    rows, _, _ = sft_rows(cfg, "validation", tok)
    batches = list(make_batches(cfg, "validation", tok))
    assert len(batches) == -(-len(rows) // 4)
    masks = sum(float(b["loss_mask"].sum()) for b in batches)
    assert masks == sum(float(r["loss_mask"].sum()) for r in rows) > 0


def test_a_tokenizer_without_its_models_template_is_refused(tmp_path):
    model = tmp_path / "model"
    chatml_tokenizer(model)  # writes tokenizer.json and tokenizer_config.json with ChatML
    path = write_jsonl(tmp_path / "chat.jsonl", toy_chats(4))
    cfg = chat_config(path, f"data.tokenizer={model / 'tokenizer.json'}")
    bare = load_tokenizer(cfg.data.tokenizer)
    with pytest.raises(ValueError, match=r"comes with a chat template .* does not carry"):
        sft_rows(cfg, "train", bare)
    rows, report, _ = sft_rows(cfg, "train", chatml_tokenizer(model))
    start = chatml_tokenizer(model).token_to_id("<|im_start|>")
    assert report.examples == 3 and all(r["inputs"][0] == start for r in rows)


def test_an_edited_corpus_is_rendered_again(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", toy_chats(6))
    cfg, tok = chat_config(path, "data.val_fraction=0"), ByteTokenizer()
    _, before, key = sft_rows(cfg, "train", tok)
    assert sft_rows(cfg, "train", tok)[2] == key  # same file, same tokenizer: same rows
    write_jsonl(path, toy_chats(7))
    _, after, changed = sft_rows(cfg, "train", tok)
    assert (before.examples, after.examples) == (6, 7) and changed != key
