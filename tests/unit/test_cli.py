"""The CLI: one-line errors with exit 2, --debug tracebacks, data/config commands."""

import json
import os
import subprocess
import sys

import pytest

from rayalign.cli import main

SFT_CFG = """\
trainer: sft
model:
  name_or_path: {model}
data:
  train:
    format: sft
    datasets:
      - path: {data}
"""


def run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_help_lists_every_command(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for cmd in ("train", "tune", "serve", "infer", "judge", "evaluate", "data", "models", "config", "env"):
        assert f" {cmd} " in out


def test_serve_needs_a_model(capsys):
    code, _, err = run(["serve"], capsys)
    assert (code, err) == (2, "error: serve needs -c CONFIG or --model PATH_OR_NAME\n")
    code, _, err = run(["serve", "--model", "m", "--serve.min_replicas", "3", "--serve.autoscaling", "true"], capsys)
    assert (code, err) == (2, "error: override --serve.min_replicas: min_replicas 3 > max_replicas 1\n")


def test_data_make_then_validate(tmp_path, capsys):
    out_file = tmp_path / "d.jsonl"
    code, out, _ = run(["data", "make", "countdown", "--n", "25", "--format", "sft", "--out", str(out_file)], capsys)
    assert code == 0 and out.strip() == f"wrote 25 'sft' rows of countdown to {out_file}"
    assert len(out_file.read_text().splitlines()) == 25
    code, out, _ = run(["data", "validate", str(out_file), "--format", "sft"], capsys)
    assert code == 0 and out.strip() == f"{out_file}: 25 rows, all valid 'sft'"
    code, out, err = run(["data", "validate", str(out_file), "--format", "text"], capsys)
    assert code == 1
    assert out.splitlines()[0] == f"{out_file}:1: field 'text' must be a string, got missing"
    assert len(out.splitlines()) == 20 and "25 of 25 rows are bad (first 20 shown)" in err


def test_bad_inputs_are_one_line_exit_2(tmp_path, capsys):
    code, _, err = run(["data", "make", "chess", "--out", str(tmp_path / "x.jsonl")], capsys)
    assert (code, err) == (2, "error: unknown task 'chess' (known: letter_count, arithmetic, countdown, "
                              "shape_count, shape_colour, colour)\n")
    code, _, err = run(["data", "validate", str(tmp_path / "none.jsonl"), "--format", "sft"], capsys)
    assert (code, err) == (2, f"error: {tmp_path}/none.jsonl: no such file or directory\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  name_or_path: m\ntraining:\n  lr: 1\n")
    code, _, err = run(["config", "explain", "-c", str(cfg)], capsys)
    assert (code, err) == (2, f"error: {cfg}:4: training.lr: unknown key (known keys: output_dir, seed, "
                              "learning_rate, lr_scheduler, warmup_steps, weight_decay, max_grad_norm, "
                              "micro_batch_size, gradient_accumulation_steps, max_steps, num_epochs, "
                              "logging_steps, eval_steps, save_steps, save_total_limit, resume, overwrite, stop_after_steps, "
                              "mixed_precision, max_failures)\n")


def test_train_validates_data_before_anything_runs(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
                    + "\n" + json.dumps({"messages": [{"role": "user", "content": 1}]}) + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SFT_CFG.format(model="m", data=data))
    code, _, err = run(["train", "-c", str(cfg)], capsys)
    assert code == 2
    assert err.startswith(f"error: {data}:2: field 'messages[0].content' must be a string, got int (format 'sft'")
    code, _, err = run(["train", "-c", str(cfg), "--data.train.datasets[0].limit", "1",
                        "--training.micro_batch_size", "x"], capsys)
    assert err.startswith("error: override --training.micro_batch_size: Input should be a valid integer")


def test_console_script_debug_shows_traceback(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "rayalign")
    bad = [exe, "config", "explain", "-c", str(tmp_path / "missing.yaml")]
    plain = subprocess.run(bad, capture_output=True, text=True)
    assert plain.returncode == 2
    assert plain.stderr == f"error: {tmp_path}/missing.yaml: config file not found\n"
    debug = subprocess.run(bad + ["--debug"], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr
    assert "ConfigError" in debug.stderr


def test_create_tiny_rejects_bad_sizes(tmp_path, capsys):
    code, _, err = run(["models", "create-tiny", str(tmp_path / "m"), "--hidden", "100"], capsys)
    assert (code, err) == (2, "error: --hidden must be a multiple of 64 (head_dim), got 100\n")
    code, _, err = run(["models", "create-tiny", str(tmp_path / "m"), "--arch", "gpt2"], capsys)
    assert (code, err) == (2, "error: --arch must be one of qwen2, llama, llava, idefics3, got 'gpt2'\n")


def test_unknown_format_is_rejected(tmp_path, capsys):
    code, _, err = run(["data", "make", "arithmetic", "--format", "csv", "--out", str(tmp_path / "x.jsonl")], capsys)
    assert (code, err) == (2, "error: --format must be one of sft, preference, kto, prompt, text, vl_sft, vl_prompt, "
                              "got 'csv'\n")


GRPO_CFG = """\
trainer: grpo
model:
  name_or_path: m
data:
  train:
    format: prompt
    datasets:
      - path: {data}
    max_length: 64
rollout:
  max_new_tokens: 32
"""


def test_grpo_recipe_errors_name_the_key(tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "How many 'a' in 'banana'?", "answer": "3"}) + "\n")
    cfg = tmp_path / "g.yaml"
    cfg.write_text(GRPO_CFG.format(data=data))
    code, _, err = run(["train", "-c", str(cfg)], capsys)
    assert (code, err) == (2, f"error: {cfg}:1: reward.functions: online RL needs at least one reward function, reward model or reward.judge\n")
    code, _, err = run(["train", "-c", str(cfg), "--reward.functions[0].name", "no_such_reward"], capsys)
    assert code == 2 and err.startswith("error: reward.functions[0].name: unknown reward 'no_such_reward'")
    code, _, err = run(["train", "-c", str(cfg), "--reward.functions[0].name", "boxed_answer",
                        "--algorithm.name", "dapo", "--algorithm.kl_coef", "0.1"], capsys)
    assert (code, err) == (2, "error: override --algorithm.kl_coef: dapo fixes kl_coef at 0.0 (the DAPO paper "
                              "drops the KL term); remove the key or choose another algorithm\n")


@pytest.mark.parametrize("argv, expected", [
    (["trian"], "error: No such command 'trian'. Did you mean 'train'?\n"),
    (["train"], "error: Missing option '-c' / '--config'.\n"),
    (["data", "make", "letter_count", "--n", "0", "--out", "x.jsonl"],
     "error: Invalid value for '--n': Input should be greater than or equal to 1\n"),
    (["models", "create-tiny", "t", "--hidden", "10"],
     "error: Invalid value for '--hidden': Input should be greater than or equal to 64\n"),
])
def test_usage_errors_are_one_line_exit_2(argv, expected, capsys, tmp_path, monkeypatch):
    """Issue 20: typer's vendored click raised past the handler as ~30-line tracebacks with exit 1."""
    monkeypatch.chdir(tmp_path)
    assert run(argv, capsys)[::2] == (2, expected)
    assert not list(tmp_path.iterdir())  # nothing was written
