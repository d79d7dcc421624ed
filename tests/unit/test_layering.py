"""Ray lives at the edges: config, data and models never import ray (STYLE.md principle 6).
Also guards the install: transformers model classes import (no broken torchvision beside torch)."""

import subprocess
import sys

PURE = ["rayalign.algorithms.preference", "rayalign.algorithms.policy", "rayalign.algorithms.advantages", "rayalign.engines.base", "rayalign.rewards.builtin", "rayalign.rewards.registry", "rayalign.config", "rayalign.config_io", "rayalign.data.formats", "rayalign.data.sources",
        "rayalign.data.loading", "rayalign.data.tasks", "rayalign.data.tokenize", "rayalign.models.loading",
        "rayalign.models.tiny", "rayalign.models.logprobs", "rayalign.batch", "rayalign.checkpoint",
        "rayalign.metrics", "rayalign.data.collate", "rayalign.training.loop", "rayalign.training.objectives",
        "rayalign.training.sharding", "rayalign.training.batching", "rayalign.training.rl_step",
        "rayalign.recipes.common", "rayalign.judge.judge", "rayalign.judge.parsers", "rayalign.judge.templates",
        "rayalign.judge.dataset", "rayalign.engines.build", "rayalign.serve.protocol",
        "rayalign.engines.vllm_errors", "rayalign.outputs", "rayalign.models.scoring", "rayalign.rewards.running",
        "rayalign.algorithms.reward_model", "rayalign.evaluate.reward_model", "rayalign.backends.verl_config",
        "rayalign.backends.verl_reward", "rayalign.backends.verl"]


def test_core_modules_do_not_import_ray():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in PURE)
            + "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_transformers_model_classes_import():
    code = "from transformers import Qwen2ForCausalLM, LlamaForCausalLM, AutoModelForCausalLM; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
