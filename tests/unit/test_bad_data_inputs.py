"""Issue 20, data and model inputs: every bad input is one line (a UserError naming the file:line or the
config key), never a traceback, and nothing is dropped or cut without a word."""

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from rayalign.cli import main
from rayalign.config import DatasetSource, LoraConfig, ModelConfig
from rayalign.data.loading import load_source, validate_file
from rayalign.errors import DataError, UserError
from rayalign.models.checks import check_model
from rayalign.models.loading import load_model, load_tokenizer

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


# --- model inputs -------------------------------------------------------------------------------------

@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    """A copy of the tiny model to damage."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def test_truncated_weights_name_the_file(model_copy):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    expected = (f"^model.name_or_path: {weights} is damaged or truncated \\(Error while deserializing header: "
                "incomplete metadata, file not fully covered\\)$")
    with pytest.raises(UserError, match=expected):
        check_model(ModelConfig(name_or_path=str(model_copy)))  # on the driver, before any worker
    with pytest.raises(UserError, match=expected):
        load_model(ModelConfig(name_or_path=str(model_copy)))  # wherever a model is loaded


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_damaged_json_names_the_file(tiny_model_dir, model_copy, name):
    path = model_copy / name
    path.write_text(path.read_text()[:300])
    with pytest.raises(UserError, match=rf"^model.name_or_path: {path} is damaged or truncated \(.* line \d+ "):
        load_tokenizer(ModelConfig(name_or_path=str(model_copy)))
    if name == "tokenizer.json":  # a tokenizer of its own: its key
        with pytest.raises(UserError, match=rf"^model.tokenizer: {path} is damaged or truncated \("):
            load_tokenizer(ModelConfig(name_or_path=str(tiny_model_dir), tokenizer=str(model_copy)))


def test_tokenizer_bigger_than_the_embedding_is_refused_at_load(tiny_model_dir, model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps({**config, "vocab_size": 512}))
    with pytest.raises(UserError) as err:
        load_tokenizer(ModelConfig(name_or_path=str(model_copy), tokenizer=str(tiny_model_dir)))
    assert str(err.value) == (f"model.tokenizer: the tokenizer '{tiny_model_dir}' has 1024 tokens but the model "
                              f"'{model_copy}' has 512 embedding rows (vocab_size); ids from 512 up would index "
                              "past them: use the model's own tokenizer")
    with pytest.raises(UserError, match=rf"^model.name_or_path: the tokenizer '{model_copy}' has 1024 tokens"):
        load_tokenizer(ModelConfig(name_or_path=str(model_copy)))
    load_tokenizer(ModelConfig(name_or_path=str(tiny_model_dir), tokenizer=str(model_copy)))  # smaller: fine


LAYERS = "embed_tokens, q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head"


@pytest.mark.parametrize("targets, message", [
    (["nonexistent"], f"nonexistent matches no Linear or Embedding layer of the model; its layers are named "
                      f"{LAYERS} (or use all-linear)"),
    (["q_proj", "qproj", "self_attn"], "qproj, self_attn match no Linear or Embedding layer of the model"),
    ("proj", "proj matches no Linear or Embedding layer"),  # one string is a regex over whole names
    ("([", "'([' is not a valid regular expression (unterminated character set at position 1)"),
])
def test_bad_lora_targets_name_the_key_and_the_layers(tiny_model_dir, targets, message):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir), lora=LoraConfig(target_modules=targets))
    with pytest.raises(UserError, match=f"^model.lora.target_modules: {re.escape(message)}"):
        check_model(cfg)
    with pytest.raises(UserError, match=f"^model.lora.target_modules: {re.escape(message)}"):
        load_model(cfg)


def test_good_lora_targets_pass(tiny_model_dir):
    for targets in (["q_proj", "v_proj"], "all-linear", r".*\.(q|v)_proj", ["model.layers.0.mlp.up_proj"]):
        check_model(ModelConfig(name_or_path=str(tiny_model_dir), lora=LoraConfig(target_modules=targets)))


def test_attn_implementation_is_named_with_its_choices(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  name_or_path: m\n  attn_implementation: sdpaa\n")
    code, _, err = cli(["config", "explain", "-c", str(cfg)], capsys)
    assert (code, err) == (2, f"error: {cfg}:3: model.attn_implementation: Input should be 'sdpa', 'eager', "
                              "'flash_attention_2', 'flash_attention_3' or 'flex_attention' (got 'sdpaa')\n")


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash_attn is installed here")
def test_flash_attention_without_its_package_names_the_key(tiny_model_dir):
    with pytest.raises(UserError, match="^model.attn_implementation: flash_attention_2 cannot be used here "
                                        r"\(FlashAttention2 .*\); use sdpa or eager$"):
        load_model(ModelConfig(name_or_path=str(tiny_model_dir), attn_implementation="flash_attention_2"))
