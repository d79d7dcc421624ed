"""Issue 20, data and model inputs: every bad input is one line (a UserError naming the file:line or the
config key), never a traceback, and nothing is dropped or cut without a word."""

import importlib.util
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rayalign.cli import main
from rayalign.config import DatasetSource, LoraConfig, ModelConfig, RecipeConfig
from rayalign.data.loading import load_source, load_split, validate_file
from rayalign.errors import DataError, UserError
from rayalign.models.checks import check_model
from rayalign.models.loading import load_model, load_tokenizer
from rayalign.recipes import dpo, sft

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


# --- rows longer than max_length: kept as before (truncated or dropped), and said -------------------------

@pytest.fixture
def no_ray(monkeypatch):
    """These paths must fail or finish before Ray starts: starting it is a test failure."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", refuse)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recipe(trainer, fmt, data, model, **sections):
    body = {"trainer": trainer, "model": {"name_or_path": str(model)},
            "data": {"train": {"format": fmt, "datasets": [{"path": str(data)}], "max_length": 64,
                               "shuffle": False}}}
    for key, value in sections.items():
        body.setdefault(key, {}).update(value)
    return RecipeConfig.model_validate(body)


def chat(user, assistant):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


WORDS = "the quick brown fox jumps over the lazy dog while seven wizards box "


def test_sft_says_which_rows_were_truncated_or_dropped(tiny_model_dir, tiny_tokenizer, tmp_path, no_ray):
    rows = [chat("q", "a")] * 3 + [chat(WORDS * 40, "a")] + [chat("q", WORDS * 40)] * 2 + [chat(WORDS * 40, "a")]
    data = write_rows(tmp_path / "d.jsonl", rows)
    cfg = recipe("sft", "sft", data, tiny_model_dir)
    notes = []
    train, _ = sft.prepare(cfg, tiny_tokenizer, {"train": load_split(cfg.data.train)}, echo=notes.append)
    assert len(train) == 5 and max(len(r["input_ids"]) for r in train) == 64
    assert notes == [
        f"data.train: 2 of 7 rows are longer than max_length 64 tokens and were dropped: truncation left no "
        f"assistant token to learn from (first: {data}:4)",
        f"data.train: 2 of 7 rows are longer than max_length 64 tokens and were truncated to it (first: {data}:5)",
    ]
    shuffled = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train": cfg.data.train.model_copy(
        update={"shuffle": True})})})
    notes.clear()  # after shuffling, the note still names the row's own line
    sft.prepare(shuffled, tiny_tokenizer, {"train": load_split(shuffled.data.train)}, echo=notes.append)
    dropped, truncated = (note.rsplit("(first: ", 1)[1] for note in notes)
    assert dropped in (f"{data}:4)", f"{data}:7)") and truncated in (f"{data}:5)", f"{data}:6)")


def test_sft_all_rows_dropped_is_a_data_error(tiny_model_dir, tiny_tokenizer, tmp_path, no_ray):
    data = write_rows(tmp_path / "d.jsonl", [chat(WORDS * 40, "a")] * 2)
    cfg = recipe("sft", "sft", data, tiny_model_dir)
    with pytest.raises(DataError) as err:
        sft.prepare(cfg, tiny_tokenizer, {"train": load_split(cfg.data.train)}, echo=print)
    assert str(err.value) == (f"data.train: all 2 rows are longer than max_length 64 tokens and truncation left no "
                              f"assistant token to learn from (first: {data}:1); raise data.train.max_length")


def test_pretrain_preference_and_prompts_say_what_was_cut(tiny_model_dir, tiny_tokenizer, tmp_path, no_ray):
    from rayalign.recipes.grpo import prepare_prompts

    data = write_rows(tmp_path / "t.jsonl", [{"text": "short"}, {"text": WORDS * 40}])
    cfg = recipe("pretrain", "text", data, tiny_model_dir)
    notes = []
    sft.prepare(cfg, tiny_tokenizer, {"train": load_split(cfg.data.train)}, echo=notes.append)
    assert notes == [f"data.train: 1 of 2 rows are longer than max_length 64 tokens and were truncated to it "
                     f"(first: {data}:2)"]
    data = write_rows(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": WORDS * 40, "rejected": "b"},
                                             {"prompt": "q", "chosen": "a", "rejected": "b"}])
    cfg = recipe("dpo", "preference", data, tiny_model_dir, preference={"loss_type": "simpo"})
    notes.clear()
    dpo.prepare(cfg, tiny_tokenizer, {"train": load_split(cfg.data.train)}, echo=notes.append)
    assert notes == [f"data.train: 1 of 2 rows are longer than max_length 64 tokens and were truncated to it (the "
                     f"prompt keeps its end, the completion its start) (first: {data}:1)"]
    data = write_rows(tmp_path / "q.jsonl", [{"prompt": "q", "answer": "1"}, {"prompt": WORDS * 40, "answer": "2"}])
    cfg = recipe("grpo", "prompt", data, tiny_model_dir, rollout={"max_new_tokens": 32},
                 algorithm={"prompts_per_step": 2}, reward={"functions": [{"name": "boxed_answer"}]})
    notes.clear()
    prompts = prepare_prompts(cfg, tiny_tokenizer, load_split(cfg.data.train), echo=notes.append)
    assert [len(p["ids"]) for p in prompts] == [1, 32] and prompts[1]["metadata"] == {"answer": "2"}
    assert notes == [f"data.train: 1 of 2 prompts are longer than 32 tokens (data.train.max_length 64 - "
                     f"rollout.max_new_tokens 32) and were cut to their last 32 tokens (first: {data}:2)"]


# --- hostile rows: bounded work, same tokens ------------------------------------------------------------

def long_text(seed, words=1500):
    rng = random.Random(seed)
    vocab = WORDS.split() + ["ünïcödé", "你好", "🙂", "\\boxed{3}", "12345", "\n", "  "]
    return " ".join(rng.choice(vocab) for _ in range(words))


def test_cutting_long_text_before_tokenising_keeps_the_same_tokens(tiny_tokenizer, monkeypatch):
    """Text past the character budget is dropped before templating; the kept tokens are the same as when
    everything is tokenised (the budget here, 2 x 64 x 15 characters, is a third of each long text)."""
    from rayalign.data import collate, tokenize

    assert tokenize.char_budget(tiny_tokenizer, 64) == 2 * 64 * 15  # '<|startoftext|>' is the longest token
    big, huge = long_text(1), long_text(2)
    user, bot = {"role": "user", "content": big}, {"role": "assistant", "content": huge}
    calls = [
        lambda: tokenize.tokenize_conversation(tiny_tokenizer, [user, bot], 64),
        lambda: tokenize.tokenize_conversation(tiny_tokenizer, [{"role": "user", "content": "q"}, bot], 64),
        lambda: tokenize.tokenize_conversation(tiny_tokenizer, [{"role": "user", "content": "q"}, bot, user, bot], 300),
        lambda: tokenize.tokenize_text(tiny_tokenizer, big, 64),
        lambda: collate.tokenize_preference(tiny_tokenizer, {"prompt": big, "chosen": huge, "rejected": "no"}, 64),
        lambda: collate.tokenize_preference(tiny_tokenizer, {"prompt": [user], "chosen": [bot], "rejected": [bot]}, 64),
        lambda: collate.tokenize_kto(tiny_tokenizer, {"prompt": [user], "completion": [bot], "label": True}, [bot], 64),
        lambda: collate.fit_prompt(tiny_tokenizer, big, 32),
        lambda: collate.fit_prompt(tiny_tokenizer, [{"role": "system", "content": huge}, user], 32),
    ]
    cut = [call() for call in calls]
    monkeypatch.setattr(tokenize, "char_budget", lambda tokenizer, max_length: 10**9)
    monkeypatch.setattr(collate, "char_budget", lambda tokenizer, max_length: 10**9)
    assert [call() for call in calls] == cut


def test_a_50mb_row_keeps_the_driver_under_1gb(tiny_model_dir, tmp_path):
    """Issue 20: one 50 MB row took the driver to 14.5 GB (templated and tokenised whole, then truncated)."""
    data = tmp_path / "big.jsonl"
    with data.open("w") as f:
        f.write(json.dumps(chat(WORDS * (50_000_000 // len(WORDS)), "a")) + "\n")
        f.write(json.dumps(chat("What is 2 + 2?", "4")) + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  name_or_path: {tiny_model_dir}\ndata:\n  train:\n    format: sft\n    datasets:\n"
                   f"      - path: {data}\n    max_length: 64\n")
    driver = f"""
import ray
from rayalign.config_io import load_config
from rayalign.data.loading import load_split
from rayalign.models.loading import load_tokenizer
from rayalign.recipes.ray_train import PREPARE
ray.init = None  # what ray_train.run does up to ray.init, no further
cfg = load_config({str(cfg)!r})
splits = {{"train": load_split(cfg.data.train, cfg.training.seed)}}
train, _ = PREPARE[cfg.trainer](cfg, load_tokenizer(cfg.model), splits)
peak = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
print(len(train), peak)
"""
    done = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    note, result = done.stdout.splitlines()
    assert note == (f"data.train: 1 of 2 rows are longer than max_length 64 tokens and were dropped: truncation "
                    f"left no assistant token to learn from (first: {data}:1)")
    rows, peak_kib = map(int, result.split())
    assert rows == 1 and peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"


# --- through `rayalign train`, up to where Ray would start --------------------------------------------

def sft_yaml(path, model, data):
    path.write_text(yaml.safe_dump({"trainer": "sft", "model": {"name_or_path": str(model)}, "data": {"train": {
        "format": "sft", "datasets": [{"path": str(data)}], "max_length": 64}}}))
    return path


@pytest.fixture
def sft_run(tiny_model_dir, tmp_path):
    """(config path, data path) of a small SFT recipe on the tiny model."""
    data = write_rows(tmp_path / "d.jsonl", [chat("q", "a"), chat("What is 2 + 2?", "4"), chat("Hi", "Hello")])
    return sft_yaml(tmp_path / "c.yaml", tiny_model_dir, data), data


def train(capsys, *argv):
    code, out, err = cli(["train", *map(str, argv)], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), (code, err)
    return err[len("error: "):-1]


def test_train_names_the_bad_input_in_one_line(sft_run, model_copy, tiny_model_dir, capsys, no_ray):
    cfg, data = sft_run
    data.write_bytes(data.read_bytes().replace(b"2 + 2", b"2 \xff 2"))
    assert train(capsys, "-c", cfg).startswith(f"{data}:2: not UTF-8 (byte 0xff at column 54) (format 'sft'")
    sft_yaml(cfg, model_copy, write_rows(data, [chat("q", "a")] * 3))
    assert train(capsys, "-c", cfg, "--training.micro_batch_size", 2, "--training.gradient_accumulation_steps", 2) \
        == ("training.micro_batch_size 2 x training.gradient_accumulation_steps 2 x scaling.num_workers 1 = 4 > 3 rows "
            "in data.train: a step would repeat rows; make the step smaller or add rows")
    assert train(capsys, "-c", cfg, "--model.lora.target_modules", "[q_proj, qkv]").startswith(
        "model.lora.target_modules: qkv matches no Linear or Embedding layer of the model; its layers are named "
        "embed_tokens, q_proj,")
    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps({**config, "vocab_size": 1000}))
    assert train(capsys, "-c", cfg).startswith(
        f"model.name_or_path: the tokenizer '{model_copy}' has 1024 tokens but the model '{model_copy}' has 1000 "
        "embedding rows (vocab_size)")
    (model_copy / "config.json").write_text(json.dumps(config))
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    assert train(capsys, "-c", cfg) == (f"model.name_or_path: {weights} is damaged or truncated (Error while "
                                        "deserializing header: incomplete metadata, file not fully covered)")


def test_grpo_step_larger_than_the_prompts_is_refused(tiny_model_dir, tmp_path, capsys, no_ray):
    data = write_rows(tmp_path / "p.jsonl", [{"prompt": f"{i} + 1?", "answer": str(i + 1)} for i in range(3)])
    cfg = tmp_path / "g.yaml"
    cfg.write_text(f"trainer: grpo\nmodel:\n  name_or_path: {tiny_model_dir}\ndata:\n  train:\n    format: prompt\n"
                   f"    datasets:\n      - path: {data}\n    max_length: 64\nrollout:\n  max_new_tokens: 32\n"
                   "reward:\n  functions:\n    - name: boxed_answer\n")
    assert train(capsys, "-c", cfg) == ("algorithm.prompts_per_step 8 > 3 rows in data.train: a step would repeat "
                                        "rows; make the step smaller or add rows")
