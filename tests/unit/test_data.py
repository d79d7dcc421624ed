"""Row validation with field paths, sources with locations, empty data, weighted mixtures."""

import json

import datasets
import pytest

from rayalign.config import DatasetSource, DataSplitConfig
from rayalign.data.formats import check_row
from rayalign.data.loading import load_source, load_split, validate_file
from rayalign.errors import DataError

USER = {"role": "user", "content": "hi"}
BOT = {"role": "assistant", "content": "hello"}


def jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt,row", [
    ("sft", {"messages": [USER, BOT]}),
    ("preference", {"prompt": [USER], "chosen": [BOT], "rejected": [BOT]}),
    ("preference", {"prompt": "q", "chosen": "a", "rejected": "b"}),
    ("kto", {"prompt": "q", "completion": "a", "label": False}),
    ("prompt", {"prompt": "q", "answer": "3", "word": "x"}),
    ("prompt", {"prompt": [USER]}),
    ("text", {"text": "some text"}),
])
def test_valid_rows(fmt, row):
    assert check_row(row, fmt) == []


@pytest.mark.parametrize("fmt,row,expected", [
    ("sft", {"messages": [USER, {"role": "bot", "content": "x"}]},
     ("messages[1].role", "must be one of system, user, assistant, tool, got 'bot'")),
    ("sft", {"messages": [USER, {"role": "assistant"}]}, ("messages[1].content", "must be a string, got missing")),
    ("sft", {"messages": [USER]}, ("messages", "has no assistant message to learn from")),
    ("sft", {"msgs": []}, ("messages", "is missing")),
    ("sft", {"messages": []}, ("messages", "must not be empty")),
    ("preference", {"prompt": [USER], "chosen": [BOT]}, ("rejected", "is missing")),
    ("preference", {"prompt": [USER], "chosen": [USER], "rejected": [BOT]},
     ("chosen[0].role", "must be one of assistant, got 'user'")),
    ("preference", {"prompt": "q", "chosen": [BOT], "rejected": "b"},
     ("rejected", "must have the same form as 'chosen' (both strings or both messages)")),
    ("kto", {"prompt": "q", "completion": "a", "label": "yes"}, ("label", "must be true or false, got 'yes'")),
    ("prompt", {"prompt": 3}, ("prompt", "must be a string, got int")),
    ("text", {"text": "  "}, ("text", "must not be empty")),
    ("text", [1, 2], ("row", "must be a JSON object, got list")),
])
def test_bad_rows_name_the_field(fmt, row, expected):
    assert check_row(row, fmt)[0] == expected


def test_validate_file_reports_every_bad_row_with_line_numbers(tmp_path):
    rows = [{"messages": [USER, BOT]}] * 3 + ['{"messages": [', {"messages": [USER]}] + [{"text": "x"}] * 25
    report = validate_file(str(jsonl(tmp_path / "d.jsonl", rows)), "sft")
    assert report.rows == 30 and report.bad_count == 27 and len(report.bad) == 20
    assert report.bad[0].startswith(f"{tmp_path}/d.jsonl:4: invalid JSON")
    assert report.bad[1] == f"{tmp_path}/d.jsonl:5: field 'messages' has no assistant message to learn from"
    assert report.bad[2] == f"{tmp_path}/d.jsonl:6: field 'messages' is missing"


def test_load_stops_at_first_bad_row(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "b"}, {"txt": "c"}])
    with pytest.raises(DataError, match=rf"^{tmp_path}/d.jsonl:3: field 'text' must be a string, got missing"):
        load_source(DatasetSource(path=str(path)), "text")


def test_empty_and_missing_sources_are_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="dataset is empty"):
        load_source(DatasetSource(path=str(empty)), "text")
    with pytest.raises(DataError, match="no such file or directory"):
        load_source(DatasetSource(path=str(tmp_path / "nope.jsonl")), "text")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        (tmp_path / "x.csv").write_text("a\n")
        load_source(DatasetSource(path=str(tmp_path / "x.csv")), "text")


def test_json_parquet_and_saved_dataset_sources(tmp_path):
    rows = [{"text": f"doc {i}"} for i in range(5)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    for path in ("d.json", "d.parquet", "saved"):
        ds = load_source(DatasetSource(path=str(tmp_path / path), limit=4), "text")
        assert ds["text"] == ["doc 0", "doc 1", "doc 2", "doc 3"]
    with pytest.raises(DataError, match="no split 'test' \\(has: train\\)"):
        load_source(DatasetSource(path=str(tmp_path / "saved"), split="test"), "text")
    bad = [{"text": "a"}, {"text": 5}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=rf"{tmp_path}/bad.json:row 2: field 'text' must be a string, got int"):
        load_source(DatasetSource(path=str(tmp_path / "bad.json")), "text")


def test_mixture_follows_weights(tmp_path):
    a = jsonl(tmp_path / "a.jsonl", [{"text": f"a{i}"} for i in range(3000)])
    b = jsonl(tmp_path / "b.jsonl", [{"text": f"b{i}"} for i in range(3000)])
    split = DataSplitConfig(format="text", datasets=[DatasetSource(path=str(a), weight=3),
                                                     DatasetSource(path=str(b), weight=1)])
    ds = load_split(split, seed=0)
    share_a = sum(t.startswith("a") for t in ds["text"]) / len(ds)
    assert 0.72 < share_a < 0.78  # 3:1 -> 0.75; first_exhausted stops when 'a' runs out
    assert len(ds) < 4100
    assert load_split(split, seed=0)["text"] == ds["text"]  # seeded


def test_single_source_shuffle_is_seeded(tmp_path):
    a = jsonl(tmp_path / "a.jsonl", [{"text": f"a{i}"} for i in range(50)])
    split = DataSplitConfig(format="text", datasets=[DatasetSource(path=str(a))])
    assert load_split(split, 1)["text"] == load_split(split, 1)["text"] != [f"a{i}" for i in range(50)]
    unshuffled = DataSplitConfig(format="text", datasets=[DatasetSource(path=str(a))], shuffle=False)
    assert load_split(unshuffled)["text"] == [f"a{i}" for i in range(50)]
