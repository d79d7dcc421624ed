"""Issue 16: DeepSpeed ZeRO as a learner backend, on CPU (DeepSpeed's CPU accelerator over gloo), 2 Ray Train
workers of the tiny model. ZeRO stages train the same model as FSDP2 (the session's baseline run): ZeRO-2 with
the optimizer offloaded, ZeRO-3 with the parameters offloaded (ZeRO-1, which differs only in
the stage DeepSpeed is given, is left out for the suite's time); checkpoints are the same HF
``model/`` plus DeepSpeed's own ``deepspeed/`` state; a ZeRO-3 run whose worker is killed is restarted by
Ray Train from its last checkpoint, and resuming that run from step 2 again gives it bit for bit;
GRPO learners on ZeRO-3 sync weights the rollout engine verifies."""

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from rayalign.checkpoint import checkpoints
from rayalign.metrics import read_metrics
from rayalign.recipes.ray_train import run
from train_helpers import WorkerKiller, build, recipe, weights


def _zero(tiny_model_dir, task_files, out, resume="never", max_failures=0, **deepspeed):
    return build(recipe(tiny_model_dir, "sft", task_files["sft"], out, save_steps=2, save_total_limit=None,
                        resume=resume, max_failures=max_failures),
                 scaling={"strategy": "deepspeed", "deepspeed": deepspeed})


def _max_diff(a, b) -> float:
    wa, wb = weights(a), weights(b)
    assert set(wa) == set(wb)
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def test_zero2_with_the_optimizer_offloaded_trains_the_fsdp2_model(fsdp2_sft_run, tiny_model_dir, task_files,
                                                                   tmp_path):
    """ZeRO-2 with the optimizer offloaded (DeepSpeedCPUAdam on CPU-resident state)."""
    base, base_final = fsdp2_sft_run
    out = tmp_path / "zero2"
    final = run(_zero(tiny_model_dir, task_files, out, zero_stage=2, offload_optimizer=True))
    ours, theirs = read_metrics(out), read_metrics(base)
    # DeepSpeedCPUAdam rounds differently from torch's AdamW: close, not equal
    for key in ("loss", "grad_norm", "lr"):
        assert [r[key] for r in ours] == pytest.approx([r[key] for r in theirs], rel=1e-4), key
    assert _max_diff(final, base_final) < 1e-4
    [shard] = {p.name for p in (checkpoints(out)[-1] / "deepspeed" / "state").glob("*optim_states.pt")} - {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt"}
    assert shard == "zero_pp_rank_1_mp_rank_00_optim_states.pt"  # rank 1's shard gathered onto rank 0
    assert not (checkpoints(out)[-1] / "optimizer.pt").exists()


def test_zero3_with_offloaded_parameters_recovers_a_killed_worker_and_resumes_bit_for_bit(
        fsdp2_sft_run, tiny_model_dir, task_files, tmp_path):
    base, base_final = fsdp2_sft_run
    straight = tmp_path / "a"
    killer = WorkerKiller(straight, after=2)  # in step 3: Ray Train restarts the ranks from checkpoint 2
    final = run(_zero(tiny_model_dir, task_files, straight, max_failures=1, zero_stage=3, offload_params=True))
    killer.join()
    assert killer.killed.get("pid") and killer.killed["step"] < 4, killer.killed
    assert [r["step"] for r in read_metrics(straight)] == [1, 2, 3, 4]  # restarted steps listed once
    assert _max_diff(final, base_final) < 1e-6  # the recovered run trained the FSDP2 run's model
    model = AutoModelForCausalLM.from_pretrained(final)  # every parameter whole, not a ZeRO-3 shard
    assert all(p.numel() > 0 for p in model.parameters())
    # the same run stopped after step 2: its output directory as the step-2 checkpoint left it
    resumed = tmp_path / "b"
    shutil.copytree(straight, resumed)
    for gone in ("final", "trainer_state.json", "checkpoints/checkpoint-000004"):
        shutil.rmtree(resumed / gone) if (resumed / gone).is_dir() else (resumed / gone).unlink()
    said = []
    again = run(_zero(tiny_model_dir, task_files, resumed, resume="auto", zero_stage=3, offload_params=True),
                echo=said.append)
    assert "resuming after step 2" in said[0]
    wa, wb = weights(final), weights(again)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [(r["loss"], r["grad_norm"]) for r in read_metrics(straight)] == \
        [(r["loss"], r["grad_norm"]) for r in read_metrics(resumed)]


def test_grpo_learners_on_zero3_sync_the_weights_the_engine_samples_with(ray_local, tiny_model_dir, tmp_path):
    from rayalign.config_io import with_overrides
    from rayalign.recipes.grpo import run as run_grpo
    from rl_helpers import grpo_recipe, prompt_file

    out = tmp_path / "grpo"
    cfg = with_overrides(grpo_recipe(tiny_model_dir, prompt_file(tmp_path), out, max_steps=2, kl_coef=0.0),
                         {"scaling.strategy": "deepspeed", "scaling.deepspeed": {"zero_stage": 3}})
    final = run_grpo(cfg)
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    # step 2 sampled with the weights step 1 made (the engine checked their fingerprint): learner and engine agree
    assert all(0 <= m["mismatch_kl"] < 1e-5 and m["grad_norm"] > 0 for m in metrics)
    trained, initial = weights(final), weights(tiny_model_dir)
    assert max((trained[k] - initial[k]).abs().max().item() for k in initial) > 1e-4  # trained, saved whole
    assert (checkpoints(out)[-1] / "deepspeed" / "state").is_dir()
