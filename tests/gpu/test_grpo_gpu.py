"""CUDA path of online RL on Ray roles: the learner on the GPU (``scaling.use_gpu``, one rank), the HF
rollout engine in its own actor on CPU (``rollout.num_gpus: 0``, so it must leave the GPU alone), the
reference as its own actor or folded into the learner. Every step's weight sync (GPU learner -> CPU
engine through the object store) is fingerprint-verified by the run itself; here the metrics are finite,
the engine's and the learner's log-probs agree across devices, and the final model loads and has moved.
Skipped without CUDA."""

import math
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))


def test_hf_rollout_worker_takes_the_gpu_only_when_it_reserved_one(ray_gpu, tiny_model_dir, report):
    from rayalign.config import ModelConfig, RolloutConfig
    from rayalign.workers.group import spawn
    from rayalign.workers.rollout import RolloutWorker, stop

    model, seen = ModelConfig(name_or_path=str(tiny_model_dir)), {}
    for gpus in (0, 1):
        [worker] = spawn(RolloutWorker, 1, role="rollout worker", num_cpus=1, num_gpus=gpus,
                         args=(model, RolloutConfig(engine="hf", num_gpus=gpus), 96, 0))
        seen[gpus] = ray_gpu.get(worker.__ray_call__.remote(
            lambda self: (str(self.engine.device), torch.cuda.is_available())))
        stop([worker])
    report(zero_gpu_actor=seen[0], one_gpu_actor=seen[1])
    assert seen[0][0] == "cpu" and seen[1][0].startswith("cuda")


@pytest.mark.parametrize("colocate", [False, True], ids=["reference_actor", "reference_colocated"])
def test_grpo_with_the_learner_on_the_gpu(ray_gpu, tiny_model_dir, tmp_path, colocate, report):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rayalign.checkpoint import checkpoints
    from rayalign.config_io import with_overrides
    from rayalign.metrics import read_metrics
    from rayalign.recipes.grpo import run
    from rl_helpers import grpo_recipe, prompt_file

    out = tmp_path / "out"
    cfg = grpo_recipe(tiny_model_dir, prompt_file(tmp_path), out, engine="hf", learners=1, max_steps=3, save_steps=2)
    final = run(with_overrides(cfg, {"scaling.use_gpu": True, "reference.colocate": colocate}))
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(math.isfinite(v) for m in metrics for v in m.values() if isinstance(v, float))
    for m in metrics:
        # engine (CPU, fp32) and learner (GPU, fp32) run the same synced weights
        assert 0 <= m["mismatch_kl"] < 1e-4 and m["grad_norm"] > 0 and m["reward_failures"] == 0, m
    assert metrics[0]["kl"] == pytest.approx(0, abs=1e-5)  # step 1: the policy is still the reference
    assert metrics[2]["kl"] > 1e-6
    assert [c.name for c in checkpoints(out)] == ["checkpoint-000002", "checkpoint-000003"]
    trained, initial = load_file(str(final / "model.safetensors")), load_file(str(tiny_model_dir / "model.safetensors"))
    assert not torch.equal(trained["model.layers.0.mlp.up_proj.weight"], initial["model.layers.0.mlp.up_proj.weight"])
    assert AutoModelForCausalLM.from_pretrained(final).config.vocab_size > 0
    report(mismatch_kl=[m["mismatch_kl"] for m in metrics], kl=[m["kl"] for m in metrics],
           step_time_s=[m["step_time_s"] for m in metrics], time_learner_s=[m["time_learner_s"] for m in metrics],
           time_sync_s=[m["time_sync_s"] for m in metrics])
