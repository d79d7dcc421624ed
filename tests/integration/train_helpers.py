"""Recipe dicts for the Ray Train tests: tiny model, 2 workers x 1 CPU x 1 thread."""

import torch
from safetensors.torch import load_file

from rayalign.config import RecipeConfig


def recipe(model_dir, trainer, train_file, out, *, eval_file=None, fmt=None, **training) -> dict:
    fmt = fmt or {"sft": "sft", "pretrain": "text", "dpo": "preference", "kto": "kto", "reward_model": "preference"}[trainer]
    data = {"train": {"format": fmt, "datasets": [{"path": train_file}], "max_length": 96}}
    if eval_file:
        data["eval"] = {"format": fmt, "datasets": [{"path": eval_file}], "max_length": 96, "shuffle": False}
    return {
        "trainer": trainer,
        "model": {"name_or_path": str(model_dir)},
        "data": data,
        "training": {"output_dir": str(out), "learning_rate": 1e-3, "lr_scheduler": "cosine",
                     "warmup_steps": 1, "micro_batch_size": 4, "gradient_accumulation_steps": 1,
                     "max_steps": 4, **training},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1, "torch_threads": 1, "strategy": "fsdp"},
    }


def build(d: dict, **sections) -> RecipeConfig:
    for key, value in sections.items():
        d[key] = {**d.get(key, {}), **value}
    return RecipeConfig.model_validate(d)


def weights(model_dir) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def ours_traceback(stderr: str) -> bool:
    """A traceback anywhere but in Ray Train's PlacementGroupCleaner actor: its State API poll raises in its own
    thread as a run's controller exits on a loaded machine, or when a second Ray runs here (the tests' own;
    Ray 2.60, harmless, not ours)."""
    return any("Traceback" in line and "PlacementGroupCleaner" not in line for line in stderr.splitlines())
