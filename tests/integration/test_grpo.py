"""GRPO end to end on Ray roles: vLLM rollout, 2 FSDP2 learners over gloo, a reference actor and reward
workers; the sync check; resource shortfalls named by role (resume on the HF engine: test_reward_models.py)."""

import pytest
import torch
from safetensors.torch import load_file

from rayalign.checkpoint import checkpoints
from rayalign.config import LoraConfig
from rayalign.config_io import with_overrides
from rayalign.errors import UserError
from rayalign.metrics import read_metrics
from rayalign.recipes.grpo import run
from rayalign.placement import check_resources

from rl_helpers import grpo_recipe, prompt_file

PHASES = ("time_generate_s", "time_reward_s", "time_reference_s", "time_learner_s", "time_sync_s")


def test_grpo_steps_through_every_role_with_vllm(ray_local, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    final = run(grpo_recipe(tiny_model_dir, prompt_file(tmp_path), out, engine="vllm", max_steps=3, save_steps=2))
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        # the engine runs the learner's weights (verified each sync) in fp32: sampled-token log-probs agree
        assert 0 <= m["mismatch_kl"] < 1e-5, m
        assert all(m[p] >= 0 for p in PHASES) and m["reward_failures"] == 0
        assert m["response_length"] > 0 and 0 < m["entropy"] < 8  # log(vocab 1024) = 6.93
        assert m["reward_std"] > 0 and m["grad_norm"] > 0  # vowel_share differs between samples
    assert metrics[0]["kl"] == pytest.approx(0, abs=1e-7)  # step 1: the policy is still the reference
    assert metrics[2]["kl"] > 1e-6  # after two updates it has moved away
    assert [c.name for c in checkpoints(out)] == ["checkpoint-000002", "checkpoint-000003"]
    trained, initial = load_file(str(final / "model.safetensors")), load_file(str(tiny_model_dir / "model.safetensors"))
    assert not torch.equal(trained["model.layers.0.mlp.up_proj.weight"], initial["model.layers.0.mlp.up_proj.weight"])


def test_dynamic_sampling_trains_the_kept_groups_with_their_reference_rows(ray_local, tiny_model_dir, tmp_path):
    """The reference actor scores the whole batch while the rewards are computed; the groups dynamic sampling
    keeps reach the learners with their own reference rows: the same KL and loss as a colocated reference, which
    only ever sees the kept rows."""
    prompts = prompt_file(tmp_path)
    runs = {}
    for name, colocate in (("actor", False), ("colocated", True)):
        cfg = grpo_recipe(tiny_model_dir, prompts, tmp_path / name, max_steps=2, save_steps=None)
        cfg = with_overrides(cfg, {"algorithm.dynamic_sampling": True, "reference.colocate": colocate,
                                   "reward.functions": [{"name": "reward_fns:vowel_share_odd_answers"}]})
        run(cfg)
        runs[name] = read_metrics(tmp_path / name)
    assert any(0 < m["groups_kept"] < 4 for m in runs["actor"]), runs["actor"]
    assert all(m["time_reference_s"] < 0.01 for m in runs["colocated"])  # folded into the learners
    for ma, mc in zip(runs["actor"], runs["colocated"]):
        assert ma["groups_kept"] == mc["groups_kept"] and ma["kl"] == pytest.approx(mc["kl"], rel=1e-5, abs=1e-9)
        assert ma["loss"] == pytest.approx(mc["loss"], rel=1e-5, abs=1e-7)
    assert runs["actor"][1]["kl"] > 1e-6  # after an update: rows paired with the wrong reference would differ


def test_lora_learner_syncs_merged_weights(ray_local, tiny_model_dir, tmp_path):
    cfg = grpo_recipe(tiny_model_dir, prompt_file(tmp_path), tmp_path / "out", learners=1, kl_coef=0, max_steps=2)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"lora": LoraConfig(r=4, alpha=8)})})
    final = run(cfg)  # every sync merged the adapter and matched the engine's fingerprint
    metrics = read_metrics(tmp_path / "out")
    assert all(m["mismatch_kl"] < 1e-5 and m["grad_norm"] > 0 for m in metrics)
    merged = load_file(str(final / "merged" / "model.safetensors"))
    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    assert (final / "adapter_model.safetensors").is_file()
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], initial["model.layers.0.self_attn.q_proj.weight"])


def test_resource_shortfall_names_the_roles(ray_local, tiny_model_dir, tmp_path):
    cfg = grpo_recipe(tiny_model_dir, prompt_file(tmp_path), tmp_path / "out", learners=2)
    cfg = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"cpus_per_worker": 1.0})})
    with pytest.raises(UserError, match=r"the RL roles ask for 3 CPU \(rollout 0.5, learner 2, reward 0.25, "
                                        r"reference 0.25\) but the Ray cluster has 2"):
        check_resources(cfg)


def test_a_reward_that_always_fails_stops_the_run_with_its_error(ray_local, tiny_model_dir, tmp_path):
    """Issue 20: a reward function with the wrong signature trained on nothing with exit 0."""
    from rayalign.errors import RunError
    from rayalign.recipes.grpo import run

    cfg = with_overrides(grpo_recipe(tiny_model_dir, prompt_file(tmp_path), tmp_path / "out", learners=1, kl_coef=0,
                                     max_steps=6), {"reward.functions": [{"name": "reward_fns:two_args"}]})
    with pytest.raises(RunError) as err:
        run(cfg)
    first, second = str(err.value).splitlines()
    assert first.startswith("step 3: rewards failed on more than 50% of the samples for 3 steps in a row")
    assert "reward fn 'reward_fns:two_args' raised TypeError: two_args() got an unexpected keyword argument" in first
    assert second == "stopped after step 2 of 6; continue from checkpoint-000002 with --resume"
    assert [m["reward_failures/reward_fns:two_args"] for m in read_metrics(tmp_path / "out")] == [16.0, 16.0]


def test_bf16_autocast_learners_sync_cast_weights_into_a_bf16_engine(ray_local, tiny_model_dir, tmp_path):
    """training.mixed_precision bf16 on 2 FSDP2 learners; rollout.dtype bfloat16: every sync casts the
    learner's float32 weights and the fingerprint verifies the cast ones (a mismatch stops the run)."""
    out = tmp_path / "out"
    cfg = grpo_recipe(tiny_model_dir, prompt_file(tmp_path), out, kl_coef=0, max_steps=2, mixed_precision="bf16")
    final = run(cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"dtype": "bfloat16"})}))
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    # autocast rounds the learner's weights to bf16 for its matmuls: the engine's bf16 weights give the same
    # products, so the two sides agree to accumulation order (measured ~1e-6)
    assert all(0 <= m["mismatch_kl"] < 1e-4 for m in metrics), [m["mismatch_kl"] for m in metrics]
    trained, initial = load_file(str(final / "model.safetensors")), load_file(str(tiny_model_dir / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight"
    assert trained[name].dtype == torch.float32 and not torch.equal(trained[name], initial[name])
