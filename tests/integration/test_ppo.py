"""PPO end to end on Ray roles (HF engine): rollout, one learner, a critic group of 2 FSDP2 ranks, the reference
and reward workers; a critic warm-up step that leaves the policy alone; checkpoints holding the critic; and a
stopped-and-resumed run equal to the straight one, critic included."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from rayalign.checkpoint import checkpoints
from rayalign.metrics import read_metrics
from rayalign.recipes.grpo import run

from rl_helpers import assert_same_run, grpo_recipe, prompt_file


def ppo_recipe(model_dir, prompts, out, **training):
    training = {"max_steps": 3, "save_steps": 1, "save_total_limit": None, **training}
    cfg = grpo_recipe(model_dir, prompts, out, learners=1, **training)
    d = cfg.model_dump(mode="json", exclude_unset=True)
    d["scaling"]["cpus_per_worker"] = 0.5
    d["algorithm"] = {"name": "ppo", "prompts_per_step": 4, "group_size": 2, "mini_batch_size": 4, "lam": 0.9}
    d["critic"] = {"learning_rate": 1e-3, "warmup_steps": 1, "num_workers": 2, "cpus_per_worker": 0.25}
    return type(cfg).model_validate(d)


def test_ppo_trains_actor_and_critic_and_resumes_exactly(ray_local, tiny_model_dir, tmp_path):
    prompts = prompt_file(tmp_path)
    straight = run(ppo_recipe(tiny_model_dir, prompts, tmp_path / "a"))
    metrics = read_metrics(tmp_path / "a")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert {"value_loss", "value_clip_fraction", "critic/grad_norm", "returns", "values", "advantages",
                "explained_variance", "time_values_s"} <= set(m), sorted(m)
        assert m["critic/grad_norm"] > 0 and m["critic/lr"] == pytest.approx(1e-3)
    assert "loss" not in metrics[0] and "loss" in metrics[1] and "loss" in metrics[2]  # step 1: the critic's warm-up
    assert metrics[1]["kl"] == pytest.approx(0, abs=1e-6)  # so step 2 still samples the initial policy
    assert metrics[2]["kl"] > 1e-7 and metrics[1]["grad_norm"] > 0

    last = checkpoints(tmp_path / "a")[-1]
    critic = AutoModelForSequenceClassification.from_pretrained(last / "critic" / "model")
    assert critic.config.num_labels == 1 and critic.score.weight.abs().sum() > 0
    first = load_file(str(checkpoints(tmp_path / "a")[0] / "critic" / "model" / "model.safetensors"))
    trained = load_file(str(last / "critic" / "model" / "model.safetensors"))
    assert not torch.equal(first["score.weight"], trained["score.weight"])  # the critic kept learning

    assert run(ppo_recipe(tiny_model_dir, prompts, tmp_path / "b", stop_after_steps=2)) is None
    resumed = run(ppo_recipe(tiny_model_dir, prompts, tmp_path / "b", resume="auto"))
    assert_same_run(tmp_path / "a", tmp_path / "b", straight, resumed,
                    ("reward_mean", "value_loss", "values", "returns", "explained_variance", "critic/grad_norm"))
    for ma, mb in zip(metrics[1:], read_metrics(tmp_path / "b")[1:]):
        assert mb["loss"] == pytest.approx(ma["loss"], rel=1e-5, abs=1e-7)
    resumed_critic = load_file(str(checkpoints(tmp_path / "b")[-1] / "critic" / "model" / "model.safetensors"))
    assert all(torch.allclose(trained[k], resumed_critic[k], atol=1e-6) for k in trained)


def test_a_killed_critic_is_rebuilt_with_the_learners_from_the_last_checkpoint(tiny_model_dir, tiny_reward_model_dir,
                                                                               tmp_path):
    """The critic's fault handling is the learner's: its process killed mid-run, both groups are rebuilt from the
    last checkpoint (the critic must match the policy's step) and the run finishes, every step logged once. The
    critic starts from a reward model here (``critic.init``)."""
    import subprocess

    import psutil
    import yaml

    from test_faults import _wait_step
    from test_signals import EXE, _steps

    cfg = ppo_recipe(tiny_model_dir, prompt_file(tmp_path), "out", max_steps=6, save_steps=2, logging_steps=1,
                     max_failures=1)
    d = cfg.model_dump(mode="json")
    d["critic"].update(num_workers=1, cpus_per_worker=0.5, warmup_steps=0, init=str(tiny_reward_model_dir))
    d["reward"]["functions"] = [{"name": "boxed_answer"}, {"name": "format_regex"}]  # built in: the CLI imports them
    path = tmp_path / "ppo.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    proc = subprocess.Popen([EXE, "train", "-c", str(path)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out = tmp_path / "out"
    _wait_step(proc, out, 3)
    [critic] = [p for p in psutil.Process(proc.pid).children(recursive=True) if "CriticWorker" in " ".join(p.cmdline())]
    critic.kill()
    stdout, stderr = proc.communicate(timeout=600)
    said = stdout + stderr
    assert proc.returncode == 0, said[-3000:]
    assert "critic-0: its Ray actor died during " in said, said[-3000:]
    assert "rebuilding the learners and the critic from checkpoint-000002 (restart 1, of at most 1)" in said, said[-3000:]
    assert _steps(out) == [1, 2, 3, 4, 5, 6]
    assert (out / "final" / "model.safetensors").exists() and (checkpoints(out)[-1] / "critic" / "model").is_dir()
