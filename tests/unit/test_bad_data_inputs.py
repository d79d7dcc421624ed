"""Issue 20, data and model inputs: every bad input is one line (a UserError naming the file:line or the
config key), never a traceback, and nothing is dropped or cut without a word."""

import json

import pytest

from rayalign.cli import main
from rayalign.config import DatasetSource
from rayalign.data.loading import load_source, validate_file
from rayalign.errors import DataError

SFT_ROW = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def cli(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_non_utf8_jsonl_names_file_line_and_column(tmp_path, capsys):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xc3\xa9 \xff"}\n{"text": "also fine"}\n')
    with pytest.raises(DataError, match=rf"^{path}:2: not UTF-8 \(byte 0xff at column 16\) \(format 'text'"):
        load_source(DatasetSource(path=str(path)), "text")
    report = validate_file(str(path), "text")
    assert (report.rows, report.bad) == (3, [f"{path}:2: not UTF-8 (byte 0xff at column 16)"])
    code, out, err = cli(["data", "validate", str(path), "-f", "text"], capsys)
    assert code == 1 and out == f"{path}:2: not UTF-8 (byte 0xff at column 16)\n"
    assert err == f"{path}: 1 of 3 rows are bad\n"


def test_non_utf8_json_and_utf8_bom(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(b'[{"text": "a"},\n {"text": "\xfe"}]')
    with pytest.raises(DataError, match=rf"^{path}:2: not UTF-8 \(byte 0xfe at column 12\)$"):
        load_source(DatasetSource(path=str(path)), "text")
    bom = tmp_path / "bom.jsonl"  # what Windows editors write: a byte-order mark is not a bad row
    bom.write_bytes(b'\xef\xbb\xbf{"text": "a"}\n')
    assert load_source(DatasetSource(path=str(bom)), "text")["text"] == ["a"]


@pytest.mark.parametrize("content, reason", [
    (bytes(range(256)) * 4, "Parquet magic bytes not found in footer"),
    (b"", "Parquet file size is 0 bytes"),
])
def test_garbage_parquet_is_one_line(tmp_path, capsys, content, reason):
    path = tmp_path / "x.parquet"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"^{path}: not a readable Parquet file \({reason}"):
        load_source(DatasetSource(path=str(path)), "text")
    code, out, err = cli(["data", "validate", str(path), "-f", "text"], capsys)
    assert code == 2 and out == "" and err.startswith(f"error: {path}: not a readable Parquet file (")
    assert err.count("\n") == 1
