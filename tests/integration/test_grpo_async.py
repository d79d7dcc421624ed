"""One-step-off async GRPO (algorithm.async_steps: 1) on Ray roles with the HF engine: which weights
generated which samples (staleness, mismatch), TIS on the stale samples, and exact resume with the
in-flight samples carried by the checkpoint."""

import json

import pytest

from rayalign.checkpoint import checkpoints
from rayalign.metrics import read_metrics
from rayalign.recipes.grpo import run
from rayalign.recipes.one_step_off import IN_FLIGHT

from rl_helpers import assert_same_run, grpo_recipe, prompt_file


def async_recipe(model_dir, prompts, out, **training):
    cfg = grpo_recipe(model_dir, prompts, out, learners=1, kl_coef=0, max_steps=4, **training)
    return cfg.model_copy(update={"algorithm": cfg.algorithm.model_copy(update={"async_steps": 1, "tis_cap": 2.0})})


def test_one_step_off_trains_on_samples_one_update_old_and_resumes_exactly(ray_local, tiny_model_dir, tmp_path):
    prompts = prompt_file(tmp_path)
    run(grpo_recipe(tiny_model_dir, prompts, tmp_path / "sync", learners=1, kl_coef=0, max_steps=1))
    straight = run(async_recipe(tiny_model_dir, prompts, tmp_path / "a"))
    sync, a = read_metrics(tmp_path / "sync"), read_metrics(tmp_path / "a")
    assert [m["staleness"] for m in a] == [0, 1, 1, 1]
    # step 1: the engine ran the learner's weights, as in a synchronous run (the same samples and loss)
    assert a[0]["mismatch_kl"] < 1e-6 and a[0]["tis_weight_mean"] == pytest.approx(1.0, abs=1e-3)
    for key in ("reward_mean", "loss", "response_length"):
        assert a[0][key] == pytest.approx(sync[0][key], rel=1e-5, abs=1e-7), key
    # later steps: samples from the weights before the last update, so engine and learner disagree
    assert all(m["mismatch_kl"] > 100 * max(a[0]["mismatch_kl"], 1e-10) for m in a[1:]), [m["mismatch_kl"] for m in a]
    assert all(0 < m["tis_weight_mean"] <= 2.0 for m in a)
    assert all(m["time_generate_s"] > 0 and m["time_generate_wait_s"] >= 0 for m in a)

    assert run(async_recipe(tiny_model_dir, prompts, tmp_path / "b", stop_after_steps=2)) is None
    [ckpt] = checkpoints(tmp_path / "b")
    carried = json.loads((ckpt / IN_FLIGHT).read_text())
    assert (carried["step"], carried["version"]) == (2, 1)  # step 3's samples, made with the weights after step 1
    assert len(carried["groups"]) == 4 and all(len(g) == 4 for g in carried["groups"])
    resumed = run(async_recipe(tiny_model_dir, prompts, tmp_path / "b", resume="auto"))
    assert_same_run(tmp_path / "a", tmp_path / "b", straight, resumed,
                    ("reward_mean", "loss", "grad_norm", "mismatch_kl", "tis_weight_mean", "staleness"))
