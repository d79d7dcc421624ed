"""Issue 13: a role that hangs stops the run within its deadline (``cluster.call_timeout_s``), naming the
role, the actor, the phase and the wait, with a checkpoint to resume from and no process left behind."""

import os
import signal
import subprocess
import time

import psutil
import yaml

from rayalign.checkpoint import checkpoints
from rayalign.config_io import with_overrides
from rl_helpers import grpo_recipe, prompt_file
from test_signals import EXE, _steps, assert_no_orphans


def test_a_hung_learner_stops_the_run_naming_it(tiny_model_dir, tmp_path):
    cfg = grpo_recipe(tiny_model_dir, prompt_file(tmp_path), "out", learners=1, kl_coef=0.0, max_steps=40,
                      save_steps=2, logging_steps=1)
    cfg = with_overrides(cfg, {"cluster.call_timeout_s": {"train": 15, "sync": 15, "save": 15}})
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    proc = subprocess.Popen([EXE, "train", "-c", str(path)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, deadline = tmp_path / "out", time.time() + 300
    while time.time() < deadline and max(_steps(out), default=0) < 3 and proc.poll() is None:
        time.sleep(0.2)
    tree = psutil.Process(proc.pid).children(recursive=True)
    for child in tree:
        child.described = " ".join(child.cmdline())
    [learner] = [p for p in tree if "LearnerWorker" in p.described]
    os.kill(learner.pid, signal.SIGSTOP)  # hung: alive, holding its resources, answering nothing
    stopped_at = time.time()
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if learner.is_running():
            os.kill(learner.pid, signal.SIGCONT)
    took = time.time() - stopped_at
    assert proc.returncode == 1, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert any(line.startswith("error: learner-0: ") and " did not answer within 15 s (cluster.call_timeout_s."
               in line for line in lines), stderr[-3000:]
    assert f"continue from {checkpoints(out)[-1].name} with --resume" in stderr, stderr[-3000:]
    assert took < 60, took  # the deadline, not a hang
    assert_no_orphans(tree)


def test_a_killed_learner_is_rebuilt_from_the_last_checkpoint(tiny_model_dir, tmp_path):
    cfg = grpo_recipe(tiny_model_dir, prompt_file(tmp_path), "out", learners=1, kl_coef=0.0, max_steps=8,
                      save_steps=2, logging_steps=1, max_failures=1)
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    proc = subprocess.Popen([EXE, "train", "-c", str(path)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, deadline = tmp_path / "out", time.time() + 300
    while time.time() < deadline and max(_steps(out), default=0) < 3 and proc.poll() is None:
        time.sleep(0.2)
    [learner] = [p for p in psutil.Process(proc.pid).children(recursive=True)
                 if "LearnerWorker" in " ".join(p.cmdline())]
    learner.kill()
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    said = stdout + stderr
    assert "learner-0: its Ray actor died during " in said, said[-3000:]
    assert "rebuilding the learners from checkpoint-000002 (restart 1, of at most 1)" in said, said[-3000:]
    assert _steps(out) == list(range(1, 9))  # every step logged once: 3.. again after the rebuild
    assert (out / "final" / "model.safetensors").is_file()
