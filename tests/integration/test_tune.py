"""Issue 12: sweeps on Ray Tune, real trials on the shared 2-CPU Ray: ASHA stops poor SFT trials early and
best_config.yaml trains as it is; GRPO trials report reward_mean every step; a PBT exploit continues from
the other trial's checkpoint; a metric no trial logs is named."""

import json
from pathlib import Path

import pytest
import yaml

from rayalign.checkpoint import checkpoints
from rayalign.config_io import load_config
from rayalign.errors import RunError
from rayalign.metrics import read_metrics
from rayalign.tune import run
from rl_helpers import grpo_recipe, prompt_file

ROOT = Path(__file__).parents[2]


def sft_sweep(tiny_model_dir, task_files, out, **tune_section):
    cfg = load_config(ROOT / "configs" / "sweeps" / "tiny" / "sft_lr.yaml", [
        "--model.name_or_path", str(tiny_model_dir), "--data.train.datasets[0].path", task_files["sft"],
        "--data.eval.datasets[0].path", task_files["sft_eval"], "--training.output_dir", str(out),
        "--training.max_steps", "16", "--training.save_steps", "16", "--training.micro_batch_size", "4"])
    from rayalign.config_io import with_overrides

    return with_overrides(cfg, {f"tune.{k}": v for k, v in tune_section.items()})


def reports(result) -> list[dict]:
    return result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else []


def test_asha_stops_poor_sft_trials_and_best_config_trains(ray_local, tiny_model_dir, task_files, tmp_path):
    out = tmp_path / "sweep"
    said = []
    results = run(sft_sweep(tiny_model_dir, task_files, out), echo=said.append)
    iterations = sorted(len(reports(r)) for r in results)
    assert len(iterations) == 4 and iterations[-1] == 4 and iterations[0] < 4  # 16 steps / 4: stopped early
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("trial_id,eval_loss,step,reports,training.learning_rate") and len(rows) == 5
    best = min((r for r in results if r.metrics.get("eval_loss") is not None), key=lambda r: r.metrics["eval_loss"])
    cfg = load_config(out / "best_config.yaml")
    assert cfg.training.learning_rate == best.config["training.learning_rate"]
    assert cfg.training.output_dir == str(out / "best") and cfg.tune.search_space == {}
    assert said[-1].startswith(f"best eval_loss = {best.metrics['eval_loss']:.6g}")
    for r in results:  # each trial's own run directory, as `rayalign train` writes it
        trial_dir = out / "trials" / r.metrics["trial_id"]
        assert [m["step"] for m in read_metrics(trial_dir)][:1] == [4]
    from rayalign.recipes.ray_train import run as train

    final = train(cfg)  # best_config.yaml as it is
    assert (final / "model.safetensors").is_file()


def test_grpo_trials_report_reward_every_step(ray_local, tiny_model_dir, tmp_path):
    cfg = grpo_recipe(tiny_model_dir, prompt_file(tmp_path), tmp_path / "sweep", max_steps=3, kl_coef=0.0,
                      logging_steps=1, save_steps=3)
    from rayalign.config_io import with_overrides

    cfg = with_overrides(cfg, {"reward.functions": [{"name": "boxed_answer"}], "scaling.num_workers": 1,
                               "scaling.cpus_per_worker": 0.5, "tune.metric": "reward_mean", "tune.mode": "max",
                               "tune.num_samples": 1,
                               "tune.search_space": {"training.learning_rate": {"grid": [1e-4, 2e-3]}}})
    results = run(cfg)
    assert len(results) == 2
    for r in results:
        steps = reports(r)
        assert [s["step"] for s in steps] == [1, 2, 3] and all("reward_mean" in s for s in steps)


def test_pbt_exploit_continues_from_the_other_trials_checkpoint(ray_local, tiny_model_dir, task_files, tmp_path):
    out = tmp_path / "pbt"
    cfg = sft_sweep(tiny_model_dir, task_files, out, search_space={
        "training.learning_rate": {"grid": [1e-6, 5e-3]}}, scheduler={"name": "pbt", "perturbation_interval": 2,
                                                                       "quantile_fraction": 0.5})
    from rayalign.config_io import with_overrides

    cfg = with_overrides(cfg, {"training.save_steps": 4, "training.save_total_limit": None})
    results = run(cfg)
    policy = list((out / "tune").glob("pbt_policy_*.txt"))
    assert policy, "no trial was exploited"
    exploits = [json.loads(line) for p in policy for line in p.read_text().splitlines()]
    # [target_tag, clone_tag, target_iteration, clone_iteration, old_config, new_config]
    by_tag = {r.metrics["trial_id"]: r for r in results}
    assert exploits and len(by_tag) == 2
    ids = list(by_tag)
    donor_dir, taker_dir = (out / "trials" / ids[0], out / "trials" / ids[1])
    copied = [c for c in checkpoints(taker_dir) if (donor_dir / "checkpoints" / c.name).exists()]
    if not copied:
        donor_dir, taker_dir = taker_dir, donor_dir
        copied = [c for c in checkpoints(taker_dir) if (donor_dir / "checkpoints" / c.name).exists()]
    same = [c for c in copied if (c / "model" / "model.safetensors").read_bytes()
            == (donor_dir / "checkpoints" / c.name / "model" / "model.safetensors").read_bytes()]
    assert same, "the exploiting trial holds none of the donor's checkpoints"
    steps = [m["step"] for m in read_metrics(taker_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == 16  # continued from the donor's step, not from 0


def test_a_metric_no_trial_logs_is_named(ray_local, tiny_model_dir, task_files, tmp_path):
    cfg = sft_sweep(tiny_model_dir, task_files, tmp_path / "bad", metric="rewards/acc", num_samples=1,
                    search_space={"training.learning_rate": {"choice": [1e-3]}}, scheduler={"name": "fifo"})
    with pytest.raises(RunError, match=r"no trial reported rewards/acc: .*tune.metric: this trial does not log "
                                       r"'rewards/acc'; it logs: .*eval_loss.*loss"):
        run(cfg)
