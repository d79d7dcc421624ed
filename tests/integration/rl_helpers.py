"""GRPO recipes for the RL tests: tiny model, letter-count prompts, every role on 2 CPUs."""

import json

from rayalign.config import RecipeConfig
from rayalign.data.tasks import generate, to_row


def prompt_file(root) -> str:
    path = root / "prompts.jsonl"
    path.write_text("".join(json.dumps(to_row(ex, "prompt", i)) + "\n"
                            for i, ex in enumerate(generate("letter_count", 32, 3))))
    return str(path)


def grpo_recipe(model_dir, prompts: str, out, *, engine="hf", learners=2, kl_coef=0.05, **training) -> RecipeConfig:
    return RecipeConfig.model_validate({
        "trainer": "grpo",
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": {"format": "prompt", "datasets": [{"path": prompts}], "max_length": 96}},
        "training": {"output_dir": str(out), "learning_rate": 2e-3, "lr_scheduler": "constant", "max_steps": 2,
                     "micro_batch_size": 4, "seed": 7, **training},
        "scaling": {"num_workers": learners, "cpus_per_worker": 0.5 if learners == 2 else 1.0, "torch_threads": 1},
        "algorithm": {"name": "grpo", "prompts_per_step": 4, "group_size": 4, "kl_coef": kl_coef},
        "rollout": {"engine": engine, "num_cpus": 0.5, "max_new_tokens": 16},
        "reward": {"functions": [{"name": "boxed_answer"}, {"name": "reward_fns:vowel_share", "weight": 0.5}],
                   "num_cpus": 0.25},
        "reference": {"num_cpus": 0.25},
    })


def assert_same_run(straight_dir, resumed_dir, straight_final, resumed_final, keys) -> None:
    """A run stopped and resumed logged every step once, with the straight run's numbers and final weights."""
    import pytest
    import torch
    from safetensors.torch import load_file

    from rayalign.metrics import read_metrics

    a, b = read_metrics(straight_dir), read_metrics(resumed_dir)
    assert [m["step"] for m in b] == [m["step"] for m in a]
    for ma, mb in zip(a, b):
        for key in keys:
            assert ma[key] == pytest.approx(mb[key], rel=1e-5, abs=1e-7), (ma["step"], key)
    wa, wb = load_file(str(straight_final / "model.safetensors")), load_file(str(resumed_final / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
