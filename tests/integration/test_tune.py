"""Issue 12: sweeps on Ray Tune as a user runs them (`rayalign tune`, its own Ray with the dashboard, whose
State API Ray Train's cleaner needs when Tune stops a trial): ASHA stops poor SFT trials early and
best_config.yaml is the best trial's recipe, ready for `rayalign train`, and a sweep killed mid-way resumes without rerunning finished trials; GRPO
trials sampled by Optuna report reward_mean every step; a PBT exploit continues from the other trial's
checkpoint at its own new learning rate; a metric no trial logs is named."""

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rayalign.config_io import load_config, with_overrides
from rayalign.metrics import read_metrics
from rl_helpers import grpo_recipe, prompt_file

ROOT = Path(__file__).parents[2]
EXE = str(Path(sys.executable).parent / "rayalign")


def sweep_file(tmp_path, tiny_model_dir, task_files, name="sweep", **updates) -> Path:
    cfg = load_config(ROOT / "configs" / "sweeps" / "tiny" / "sft_lr.yaml", [
        "--model.name_or_path", str(tiny_model_dir), "--data.train.datasets[0].path", task_files["sft"],
        "--data.eval.datasets[0].path", task_files["sft_eval"], "--training.output_dir", str(tmp_path / name),
        "--training.max_steps", "16", "--training.save_steps", "16", "--training.micro_batch_size", "4"])
    path = tmp_path / f"{name}.yaml"
    updates = {"tune.num_samples": 1, **updates}
    path.write_text(yaml.safe_dump(with_overrides(cfg, updates).model_dump(mode="json"), sort_keys=False))
    return path


def tune(path, *args, timeout=600):
    return subprocess.run([EXE, "tune", "-c", str(path), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=path.parent)


def results(sweep: Path) -> list[dict]:
    with open(sweep / "results.csv") as f:
        return list(csv.DictReader(f))


def test_asha_stops_poor_trials_a_killed_sweep_resumes_and_best_config_trains(tiny_model_dir, task_files,
                                                                              tmp_path):
    # best learning rate first, one trial at a time: each later, worse trial meets better ones at ASHA's first
    # rung and is stopped there (asynchronous ASHA lets the first trials at a rung go on, so order decides)
    path = sweep_file(tmp_path, tiny_model_dir, task_files, **{
        "tune.search_space": {"training.learning_rate": {"grid": [3e-3, 1e-4, 1e-5]}},
        "tune.max_concurrent_trials": 1})
    sweep = tmp_path / "sweep"
    started = time.time()
    proc = subprocess.Popen([EXE, "tune", "-c", str(path)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, first_done = time.time() + 600, None
    while time.time() < deadline and proc.poll() is None:
        finals = list((sweep / "trials").glob("*/final")) if (sweep / "trials").exists() else []
        if finals and first_done is None:
            first_done = time.time()
        if first_done and time.time() - first_done > 15:  # Tune has snapshotted the first trial as finished
            break
        time.sleep(1)
    assert first_done, "the first trial never finished"
    proc.send_signal(signal.SIGKILL)  # the sweep's driver dies mid-sweep
    proc.wait()
    [finished] = [p.parent for p in (sweep / "trials").glob("*/final")]
    before = (finished / "metrics.jsonl").read_bytes()
    done = tune(path, "--resume")
    took = time.time() - started
    assert done.returncode == 0, done.stderr[-3000:]
    assert (finished / "metrics.jsonl").read_bytes() == before  # the finished trial is not rerun
    rows = results(sweep)
    assert len(rows) == 3 and list(rows[0])[:5] == ["trial_id", "eval_loss", "step", "reports",
                                                    "training.learning_rate"]
    reports = sorted(int(r["reports"]) for r in rows)
    assert reports[-1] == 4 and reports[0] < 4, reports  # 16 steps / 4 per report; ASHA stopped some early
    cfg = load_config(sweep / "best_config.yaml")  # `rayalign train -c` takes it as it is (validated here)
    assert cfg.training.learning_rate == float(rows[0]["training.learning_rate"]) == 3e-3
    assert cfg.training.output_dir == str(sweep / "best") and cfg.tune.search_space == {}
    assert f"best eval_loss = {float(rows[0]['eval_loss']):.6g} (trial {rows[0]['trial_id']})" in done.stdout
    for row in rows:  # each trial's own run directory, as `rayalign train` writes it
        assert [m["step"] for m in read_metrics(sweep / "trials" / row["trial_id"])][:1] == [4]
    print(f"3-trial ASHA sweep, killed and resumed: {took:.0f} s")


def test_grpo_trials_sampled_by_optuna_report_reward_every_step(tiny_model_dir, tmp_path):
    cfg = grpo_recipe(tiny_model_dir, prompt_file(tmp_path), tmp_path / "sweep", max_steps=3, kl_coef=0.0,
                      logging_steps=1, save_steps=3)
    cfg = with_overrides(cfg, {"reward.functions": [{"name": "boxed_answer"}], "scaling.num_workers": 1,
                               "scaling.cpus_per_worker": 0.5, "tune.metric": "reward_mean", "tune.mode": "max",
                               "tune.num_samples": 2, "tune.search_alg": "optuna",
                               "tune.search_space": {"training.learning_rate": {"loguniform": [1e-4, 2e-3]}}})
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    done = tune(path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = results(tmp_path / "sweep")
    assert len(rows) == 2  # two samples from Optuna's TPE, each in the range
    rates = [float(r["training.learning_rate"]) for r in rows]
    assert all(1e-4 <= lr <= 2e-3 for lr in rates) and rates[0] != rates[1], rates
    for row in rows:
        logged = read_metrics(tmp_path / "sweep" / "trials" / row["trial_id"])
        assert [m["step"] for m in logged] == [1, 2, 3] and all("reward_mean" in m for m in logged)
        assert int(row["reports"]) == 3


def test_pbt_exploit_continues_from_the_other_trials_checkpoint(tiny_model_dir, task_files, tmp_path):
    path = sweep_file(tmp_path, tiny_model_dir, task_files, name="pbt", **{
        "tune.search_space": {"training.learning_rate": {"grid": [1e-6, 5e-3]}},
        "tune.scheduler": {"name": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.5},
        "training.save_steps": 4, "training.save_total_limit": None})  # 16 steps: at 8 no exploit came, once
    done = tune(path)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = tmp_path / "pbt"
    ids = [r["trial_id"] for r in results(sweep)]
    copied = []
    for taker, donor in ((ids[0], ids[1]), (ids[1], ids[0])):
        for ckpt in sorted((sweep / "trials" / taker / "checkpoints").glob("checkpoint-*")):
            theirs = sweep / "trials" / donor / "checkpoints" / ckpt.name / "model" / "model.safetensors"
            mine = ckpt / "model" / "model.safetensors"
            if mine.is_file() and theirs.is_file() and mine.read_bytes() == theirs.read_bytes():
                copied.append((taker, ckpt.name))
    assert copied, "no trial holds another's checkpoint: nothing was exploited"
    taker, first = copied[0]
    logged = read_metrics(sweep / "trials" / taker)
    # its own rows up to the donor's step, then on from there: nothing lost, nothing repeated, not from 0
    assert [m["step"] for m in logged] == [4, 8, 12, 16], logged
    if first != "checkpoint-000016":  # exploited mid-run (timing decides where PBT first can)
        # it trained on at the rate PBT's explore step gave it, not at the donor checkpoint's
        [final] = [r for r in results(sweep) if r["trial_id"] == taker]
        assert logged[-1]["lr"] == pytest.approx(float(final["training.learning_rate"]), rel=1e-9)
    else:  # exploited at its last report: the donor's finished run is its end
        donor = [t for t in ids if t != taker][0]
        assert (sweep / "trials" / taker / "final" / "model.safetensors").read_bytes() == \
            (sweep / "trials" / donor / "checkpoints" / first / "model" / "model.safetensors").read_bytes()


def test_a_metric_no_trial_logs_is_named(tiny_model_dir, task_files, tmp_path):
    path = sweep_file(tmp_path, tiny_model_dir, task_files, name="bad", **{
        "tune.metric": "rewards/acc", "tune.search_space": {"training.learning_rate": {"choice": [1e-3]}},
        "tune.scheduler": {"name": "fifo"}, "training.max_steps": 1, "training.save_steps": 1,
        "training.eval_steps": 1, "training.logging_steps": 1})
    done = tune(path)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no trial reported rewards/acc: ") and "it logs: " in last and "eval_loss" in last
