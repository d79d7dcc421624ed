"""Issue 20: SIGTERM (a preemption) and SIGINT (Ctrl-C) stop a training run at the next step boundary
with a checkpoint, one line naming it and the resume command, exit 143 / 130, and no process of the run
left behind; ``--resume`` then finishes with every step logged once. The SFT case is also `rayalign train`
as a user runs it (relative paths, an override, a finished run not replaced); that a trained final directory
loads in vLLM is the pipeline test's (test_letter_count_pipeline.py: its SFT model is evaluated and sampled there)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from rayalign.checkpoint import checkpoints, problem
from rayalign.metrics import read_metrics
from rl_helpers import grpo_recipe, prompt_file
from train_helpers import ours_traceback, recipe

EXE = str(Path(sys.executable).parent / "rayalign")


def _steps(out: Path) -> list[int]:
    try:
        return [m["step"] for m in read_metrics(out)]
    except (json.JSONDecodeError, OSError):  # a line being written
        return []


def interrupt_after(argv, cwd, out: Path, signum: int, step: int, timeout=300):
    """Run the CLI, send ``signum`` to the driver once ``step`` is logged; (result, the driver's process
    tree just before the signal)."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline and not any(s >= step for s in _steps(out)) and proc.poll() is None:
        time.sleep(0.1)
    tree = psutil.Process(proc.pid).children(recursive=True)
    for child in tree:
        child.described = " ".join(child.cmdline())  # read now: once dead it cannot tell
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout, stderr, tree


def assert_no_orphans(tree):
    deadline = time.time() + 30
    while time.time() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree):
        time.sleep(0.5)
    left = [f"{p.pid} {p.described[:80]}" for p in tree if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes of the run left behind: {left}"


def test_sigterm_checkpoints_sft_and_resume_finishes(tiny_model_dir, task_files, tmp_path):
    # relative model and output paths, as recipes have (workers resolve them), and a dotted override
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump(recipe(os.path.relpath(tiny_model_dir, tmp_path), "sft", task_files["sft"], "out",
                                         max_steps=24, save_steps=1000, micro_batch_size=2)))
    out, lr = tmp_path / "out", ["--training.learning_rate", "2e-3"]
    code, _, stderr, tree = interrupt_after([EXE, "train", "-c", str(cfg), *lr], tmp_path, out, signal.SIGTERM, 2)
    assert code == 143, stderr[-3000:]
    [saved] = checkpoints(out)
    stopped = json.loads((saved / "trainer_state.json").read_text())["step"]
    assert 2 <= stopped < 24 and problem(saved) is None
    assert stderr.strip().splitlines()[-1] == (
        f"SIGTERM: stopped after step {stopped} of 24; saved {saved.name} in {out / 'checkpoints'}; "
        f"continue with: rayalign train -c {cfg} {' '.join(lr)} --resume")
    assert not ours_traceback(stderr)
    assert _steps(out) == list(range(1, stopped + 1))
    assert_no_orphans(tree)
    done = subprocess.run([EXE, "train", "-c", str(cfg), *lr, "--resume"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _steps(out) == list(range(1, 25)) and (out / "final" / "model.safetensors").is_file()
    assert done.stdout.strip().splitlines()[-1] == f"final model in {out / 'final'}"
    assert yaml.safe_load((out / "config.yaml").read_text())["training"]["learning_rate"] == 2e-3
    again = subprocess.run([EXE, "train", "-c", str(cfg)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert again.returncode == 2 and "already holds checkpoints of a run" in again.stderr


def test_ctrl_c_checkpoints_grpo_with_exit_130(tiny_model_dir, tmp_path):
    cfg = grpo_recipe(tiny_model_dir, prompt_file(tmp_path), "out", max_steps=40, save_steps=1000,
                      logging_steps=1).model_dump(mode="json")
    cfg["reward"]["functions"] = [{"name": "boxed_answer"}]
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    code, _, stderr, tree = interrupt_after([EXE, "train", "-c", str(path)], tmp_path, out, signal.SIGINT, 1)
    assert code == 130, stderr[-3000:]
    [saved] = checkpoints(out)
    stopped = json.loads((saved / "trainer_state.json").read_text())["step"]
    assert 1 <= stopped < 40
    assert stderr.strip().splitlines()[-1] == (
        f"SIGINT: stopped after step {stopped} of 40; saved {saved.name} in {out / 'checkpoints'}; "
        f"continue with: rayalign train -c {path} --resume")
    assert not ours_traceback(stderr)
    assert_no_orphans(tree)


def test_sigkill_of_the_driver_leaves_no_process_behind(tiny_model_dir, task_files, tmp_path):
    """Killed outright, the driver cannot clean up; Ray's agents used to outlive it for good."""
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump(recipe(str(tiny_model_dir), "sft", task_files["sft"], "out", max_steps=200)))
    code, _, _, tree = interrupt_after([EXE, "train", "-c", str(cfg)], tmp_path, tmp_path / "out", signal.SIGKILL, 1)
    assert code == -signal.SIGKILL
    described = [p.described for p in tree]
    assert any("raylet" in d for d in described) and any("-m rayalign.local_ray" in d for d in described)
    assert_no_orphans(tree)
