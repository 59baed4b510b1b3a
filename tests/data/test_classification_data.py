"""Classification data (llm/data/classification.py): records, label sets, rows, batches."""

from __future__ import annotations

import numpy as np
import pytest

from llm.config import load_config
from llm.data import make_batches, resolve_labels
from llm.data.classification import candidate_rows, classification_rows, read_records
from llm.data.sources import SourceError
from llm.tokenizers import ByteTokenizer
from tests.data.classification_fixtures import toy_records, write_jsonl

TOK = ByteTokenizer()


def config(corpus, *extra):
    return load_config(
        None,
        [f"data.corpus={corpus}", "data.format=classification", "loss.name=classification",
         "data.val_fraction=0.25", "train.batch_size=4", "train.seq_len=16", *extra],
    )  # fmt: skip


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "abc"}', "d.jsonl:2: record is missing key 'label'"),
        ('{"text": 3, "label": "x"}', "d.jsonl:2: 'text' is int, not a string"),
        ('{"text": "a", "label": ""}', "d.jsonl:2: 'label' is the empty string"),
        ("[1, 2]", "d.jsonl:2: expected a JSON object, got list"),
        ("{not json", "d.jsonl:2: invalid JSON"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "ok", "label": "a"}, line])
    with pytest.raises(SourceError, match=message):
        read_records(str(path))


def test_label_outside_the_configured_set_names_file_and_line(tmp_path):
    records = toy_records(12)
    records[7]["label"] = "nonsense"
    path = write_jsonl(tmp_path / "d.jsonl", records)
    cfg = config(path, "loss.labels=[digit,punct,vowel]", "data.val_fraction=0")
    with pytest.raises(SourceError, match=r"d.jsonl:8: label 'nonsense' is not in the label set"):
        classification_rows(cfg, "train", TOK)


def test_labels_default_to_the_sorted_train_labels(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", toy_records(12))
    cfg = resolve_labels(config(path))
    assert cfg.loss.labels == ("digit", "punct", "vowel")
    given = config(path, "loss.labels=[vowel,digit,punct]")  # a given order is kept
    assert resolve_labels(given).loss.labels == ("vowel", "digit", "punct")


def test_wrong_loss_for_the_format_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", toy_records(12))
    cfg = load_config(None, [f"data.corpus={path}", "data.format=classification"])
    with pytest.raises(ValueError, match=r"set loss\.name=classification"):
        resolve_labels(cfg)


def test_rows_hold_bos_prompt_and_label(tmp_path):
    records = [{"text": "ab", "label": "y"}, {"text": "cde", "label": "x"}]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    cfg = resolve_labels(config(path, "data.val_fraction=0", "loss.prompt=<{text}>"))
    rows, report, _ = classification_rows(cfg, "train", TOK)
    order = np.argsort(rows["label"])  # labels sorted: x=0, y=1
    inputs, seg = rows["inputs"][order], rows["segment_ids"][order]
    assert list(inputs[0, :6]) == [TOK.bos_id, *b"<cde>"] and inputs[0, 6] == TOK.pad_id
    assert list(inputs[1, :5]) == [TOK.bos_id, *b"<ab>"]
    assert seg[0].sum() == 6 and seg[1].sum() == 5 and list(rows["label"][order]) == [0, 1]
    assert report.per_label == {"x": 1, "y": 1} and report.skipped_overlong == 0


def test_overlong_is_an_error_or_skipped_and_counted(tmp_path):
    records = toy_records(12)
    records[4]["text"] = "0" * 40
    path = write_jsonl(tmp_path / "d.jsonl", records)
    cfg = resolve_labels(config(path, "data.val_fraction=0"))
    with pytest.raises(ValueError, match=r"longest: 41 at .*d.jsonl:5\); examples are never cut"):
        classification_rows(cfg, "train", TOK)
    skip = resolve_labels(config(path, "data.val_fraction=0", "data.sft_overlong=skip"))
    rows, report, _ = classification_rows(skip, "train", TOK)
    assert report.skipped_overlong == 1 and len(rows["label"]) == 11 == report.examples


def test_label_token_rows_reserve_room_for_the_verbaliser(tmp_path):
    """A prompt of 12 tokens fits L=16 alone but not with the 6-token verbaliser ' vowel'."""
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a" * 11, "label": "vowel"}] * 3)
    cfg = config(path, "data.val_fraction=0", "loss.head=label_tokens", "loss.labels=[x,vowel]")
    with pytest.raises(ValueError, match="need more than 10 tokens"):
        classification_rows(cfg, "train", TOK)


def test_candidate_rows_place_each_verbaliser_after_the_prompt():
    rows = candidate_rows([[7, 8, 9]], [[1], [2, 3]], L=6, pad=0)
    assert rows["inputs"][0].tolist() == [[7, 8, 9, 1, 0, 0], [7, 8, 9, 2, 3, 0]]
    assert rows["segment_ids"][0].tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]]
    # token j of the verbaliser is predicted at position len(prompt) - 1 + j
    assert rows["score_at"][0].tolist() == [[2, 0], [2, 3]]
    assert rows["score_ids"][0].tolist() == [[1, 0], [2, 3]]
    assert rows["score_mask"][0].tolist() == [[1, 0], [1, 1]]


def test_make_batches_validation_pads_with_weight_zero(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", toy_records(20))
    cfg = resolve_labels(config(path))  # 5 validation examples, batches of 4
    batches = list(make_batches(cfg, "validation", TOK))
    assert len(batches) == 2 and batches[0]["inputs"].shape == (4, 16)
    weights = np.concatenate([b["weight"] for b in batches])
    assert weights.tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    train = make_batches(cfg, "train", TOK)
    first = next(train)
    assert set(first) == {"inputs", "positions", "segment_ids", "label", "weight"}
    assert first["label"].shape == (4,) and first["weight"].tolist() == [1, 1, 1, 1]
