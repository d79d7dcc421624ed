"""Issue 13: faults in a GRPO run, as an operator meets them. A learner process killed mid-run: the learner
group is rebuilt from the last checkpoint and the run goes on, every step logged once. Then the new learner
hangs (SIGSTOP: alive, holding its resources, answering nothing): past its deadline
(``cluster.call_timeout_s``) the run stops naming the actor, the phase and the wait, with the checkpoint to
resume from and no process left behind."""

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


def _learner(proc) -> psutil.Process:
    [learner] = [p for p in psutil.Process(proc.pid).children(recursive=True)
                 if "LearnerWorker" in " ".join(p.cmdline())]
    return learner


def _wait_step(proc, out, step: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and max(_steps(out), default=0) < step and proc.poll() is None:
        time.sleep(0.2)
    assert max(_steps(out), default=0) >= step, proc.poll()


def test_a_killed_learner_is_rebuilt_and_a_hung_one_stops_the_run_naming_it(tiny_model_dir, tmp_path):
    cfg = grpo_recipe(tiny_model_dir, prompt_file(tmp_path), "out", learners=1, kl_coef=0.0, max_steps=60,
                      save_steps=2, logging_steps=1, max_failures=1)
    cfg = with_overrides(cfg, {"cluster.call_timeout_s": {"train": 15, "sync": 15, "save": 15},
                               "reward.functions": [{"name": "boxed_answer"}]})  # built in: the CLI imports it
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    proc = subprocess.Popen([EXE, "train", "-c", str(path)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out = tmp_path / "out"
    _wait_step(proc, out, 3)
    _learner(proc).kill()  # SIGKILL mid-run: rebuilt from checkpoint-000002, the run goes on
    _wait_step(proc, out, 7)
    assert _steps(out) == list(range(1, max(_steps(out)) + 1))  # steps 3.. logged again, once
    tree = psutil.Process(proc.pid).children(recursive=True)
    for child in tree:
        child.described = " ".join(child.cmdline())
    hung = _learner(proc)
    os.kill(hung.pid, signal.SIGSTOP)
    stopped_at = time.time()
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if hung.is_running():
            os.kill(hung.pid, signal.SIGCONT)
    took = time.time() - stopped_at
    assert proc.returncode == 1, stderr[-3000:]
    said = stdout + stderr
    assert "learner-0: its Ray actor died during " in said, said[-3000:]
    assert "rebuilding the learners from checkpoint-000002 (restart 1, of at most 1)" in said, said[-3000:]
    lines = stderr.strip().splitlines()
    assert any(line.startswith("error: learner-0.r1: ") and " did not answer within 15 s (cluster.call_timeout_s."
               in line for line in lines), stderr[-3000:]
    assert f"continue from {checkpoints(out)[-1].name} with --resume" in stderr, stderr[-3000:]
    assert took < 60, took  # the deadline, not a hang
    assert_no_orphans(tree)
