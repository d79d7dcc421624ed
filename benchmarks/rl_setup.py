"""The shared setting of the online-RL benchmarks (``grpo_vs_trl``, ``rl_profile``): models of three sizes
(random weights, the tiny-model factory), letter-count prompts, and one rayalign GRPO recipe.

Setting (issue 14): 4 prompts x 8 generations, 128 new tokens, kl_coef 0, micro batch 32, fp32; rayalign
with 1 FSDP2 learner (2 torch threads) and 1 vLLM rollout worker (2 threads; the phases take turns). A random-weight model almost never
emits its stop token, so every completion runs to 128 tokens: both frameworks generate the same work.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = {  # name -> create_tiny arguments
    "tiny": {"hidden": 128, "layers": 2},          # ~0.6M parameters, the test suite's model
    "34m": {"hidden": 512, "layers": 8},           # 34.1M
    "100m": {"hidden": 768, "layers": 12},         # 114M
}
PROMPTS, GROUP, NEW_TOKENS, LR, SKIP = 4, 8, 128, 1e-6, 2


def make_inputs(root: Path, size: str) -> dict:
    """The model of ``size`` and a prompt file, made once under ``root``."""
    from rayalign.data.tasks import generate, to_row
    from rayalign.models.tiny import create_tiny

    model = root / f"model-{size}"
    if not (model / "config.json").exists():
        create_tiny(model, vocab=1024, **SIZES[size])
    prompts = root / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps(to_row(e, "prompt")) + "\n" for e in generate("letter_count", 400, 5)))
    return {"model": model, "prompts": prompts}


PRECISIONS = ("fp32", "bf16")


def rayalign_config(inputs: dict, out: Path, steps: int, precision: str = "fp32", **over) -> "RecipeConfig":  # noqa: F821
    """The benchmark's GRPO recipe; ``precision`` bf16: the learner under bf16 autocast and the engine in
    bfloat16 (what TRL's default ``bf16=True`` does to its model, which also generates); ``over``: top-level
    sections merged over it (e.g. rollout={...})."""
    from rayalign.config import RecipeConfig

    cfg = {
        "trainer": "grpo", "model": {"name_or_path": str(inputs["model"])},
        "data": {"train": {"format": "prompt", "datasets": [{"path": str(inputs["prompts"])}], "max_length": 192}},
        "training": {"output_dir": str(out), "learning_rate": LR, "lr_scheduler": "constant", "micro_batch_size": 32,
                     "max_steps": steps, "save_steps": 100_000, "max_grad_norm": 1.0},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "torch_threads": 2},
        "algorithm": {"name": "grpo", "prompts_per_step": PROMPTS, "group_size": GROUP, "kl_coef": 0.0,
                      "clip_low": 0.2, "clip_high": 0.2, "loss_agg": "token-mean"},
        "rollout": {"engine": "vllm", "num_workers": 1, "num_cpus": 0.5, "max_new_tokens": NEW_TOKENS, "threads": 2},
        "reward": {"functions": [{"name": "letter_count"}], "num_workers": 1, "num_cpus": 0.25},
    }
    if precision == "bf16":
        cfg["training"]["mixed_precision"], cfg["rollout"]["dtype"] = "bf16", "bfloat16"
    for section, values in over.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return RecipeConfig.model_validate(cfg)


def steady(rows: list[dict], key: str) -> float:
    """Median of ``key`` over the steps after the first ``SKIP`` (engine warm-up, first allocations)."""
    return statistics.median(r[key] for r in rows[SKIP:] if key in r)
