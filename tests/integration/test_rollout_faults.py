"""Engine deaths in GRPO (issue 11): a rollout worker whose vLLM engine (it runs in the actor's process)
is SIGKILLed mid-run is replaced, loaded with the learner's weights (fingerprint-verified) and the step's
generation retried, and the run finishes every step once; past ``rollout.max_restarts`` the run stops with the worker and cause named,
leaving a checkpoint that ``--resume`` finishes from."""

import threading
import time

import psutil
import pytest

from rayalign.checkpoint import checkpoints
from rayalign.errors import RunError
from rayalign.metrics import read_metrics
from rayalign.recipes.grpo import run

from rl_helpers import grpo_recipe, prompt_file


def rollout_actor() -> psutil.Process:
    """The rollout worker's actor process (Ray titles it ``ray::RolloutWorker``)."""
    [proc] = [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0].startswith(
        "ray::RolloutWorker")]
    return proc


def kill_after_step(out, step: int, victims) -> threading.Thread:
    """Once ``step`` is in metrics.jsonl, SIGKILL ``victims()`` (mid-run: the next step is under way)."""
    def watch() -> None:
        deadline = time.monotonic() + 600
        while len(read_metrics(out)) < step and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in victims():
            proc.kill()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_killed_vllm_engine_is_restarted_and_the_run_finishes(ray_local, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    cfg = grpo_recipe(tiny_model_dir, prompt_file(tmp_path), out, engine="vllm", learners=1, kl_coef=0,
                      max_steps=6, save_steps=None)
    watcher = kill_after_step(out, 2, lambda: [rollout_actor()])  # vLLM runs inside the actor's process
    assert run(cfg) is not None
    watcher.join(timeout=5)
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]  # none lost, none twice
    assert [m["rollout_restarts"] for m in metrics][:2] == [0, 0] and metrics[-1]["rollout_restarts"] == 1
    # the new engine runs the learner's weights: sampled log-probs agree as before the kill
    assert all(0 <= m["mismatch_kl"] < 1e-5 for m in metrics)


def test_deaths_past_max_restarts_stop_the_run_and_resume_finishes(ray_local, tiny_model_dir, tmp_path):
    """HF engine, killed likewise."""
    out, prompts = tmp_path / "out", prompt_file(tmp_path)
    cfg = grpo_recipe(tiny_model_dir, prompts, out, learners=1, kl_coef=0, max_steps=5, save_steps=None)
    cfg = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"max_restarts": 0})})
    kill_after_step(out, 2, lambda: [rollout_actor()])
    with pytest.raises(RunError) as failed:
        run(cfg)
    stopped = len(read_metrics(out))
    assert stopped >= 2
    assert str(failed.value).startswith("rollout worker 0: its Ray actor died (the process was killed or crashed); "
                                        "stopping: 0 restart(s) already (rollout.max_restarts=0)\n"
                                        f"stopped after step {stopped} of 5; continue from "
                                        f"checkpoint-{stopped:06d} with --resume")
    assert [c.name for c in checkpoints(out)] == [f"checkpoint-{stopped:06d}"]
    assert run(cfg.model_copy(update={"training": cfg.training.model_copy(update={"resume": "auto"})})) is not None
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4, 5]
