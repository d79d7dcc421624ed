"""verl's own trainer on one GPU (trainer: verl_grpo): a few real GRPO steps on the tiny model through verl's
FSDP actor and vLLM rollout, rewarded by rayalign's functions through the bridge, then metrics.jsonl under
rayalign's names and final/ as an HF directory that loads. Skipped without CUDA; needs verl's runtime env:
by default Ray pip-installs verl[vllm] (network), or set RAYALIGN_VERL_RUNTIME_ENV to a runtime_env JSON
(``{}`` where this environment has verl and its pins)."""

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))


def test_verl_grpo_steps_on_one_gpu(ray_gpu, tiny_model_dir, tmp_path, report):
    from transformers import AutoModelForCausalLM

    from rayalign.backends.verl import run
    from rayalign.config_io import with_overrides
    from rayalign.metrics import read_metrics
    from rl_helpers import grpo_recipe, prompt_file

    out = tmp_path / "out"
    cfg = grpo_recipe(tiny_model_dir, prompt_file(tmp_path), out, engine="vllm", learners=1, kl_coef=0.0,
                      max_steps=3, save_steps=3)
    env = json.loads(os.environ.get("RAYALIGN_VERL_RUNTIME_ENV", "null"))
    final = run(with_overrides(cfg, {
        "trainer": "verl_grpo", "scaling.use_gpu": True, "verl_runtime_env": env,
        "reward.functions": [{"name": "boxed_answer"}, {"name": "format_regex", "weight": 0.5}],
        "verl_overrides": {"actor_rollout_ref.rollout.gpu_memory_utilization": 0.3,
                           "actor_rollout_ref.rollout.enforce_eager": True, "trainer.val_before_train": False}}))
    metrics = read_metrics(out)
    report(steps=[m["step"] for m in metrics], reward_mean=[m.get("reward_mean") for m in metrics])
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(math.isfinite(m["reward_mean"]) and math.isfinite(m["loss"]) for m in metrics)
    assert AutoModelForCausalLM.from_pretrained(final).config.vocab_size > 0
