"""The soak test: the shipped GRPO recipe (the quickstart's, configs/recipes/tiny/grpo.yaml) for 30 steps
on vLLM. Short RL tests ran 3 steps of small batches and missed the engine crash that killed the demo at
step 1-2 (issue 11: 16 prompts x 8 seeded samples past the scheduler's token budget); this one runs the
real step shape long enough for such failures to show before they land."""

import json
from pathlib import Path

from rayalign.checkpoint import checkpoints
from rayalign.config_io import load_config
from rayalign.data.tasks import generate, to_row
from rayalign.metrics import read_metrics
from rayalign.recipes.grpo import run

ROOT = Path(__file__).parents[2]


def test_shipped_grpo_recipe_runs_30_steps_on_vllm(ray_local, tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"  # as the recipe's comment makes them: 2000 letter-count prompts
    prompts.write_text("".join(json.dumps(to_row(ex, "prompt", i)) + "\n"
                               for i, ex in enumerate(generate("letter_count", 2000, 3))))
    out = tmp_path / "grpo"
    cfg = load_config(ROOT / "configs" / "recipes" / "tiny" / "grpo.yaml", [
        "--model.name_or_path", str(tiny_model_dir), "--data.train.datasets[0].path", str(prompts),
        "--training.output_dir", str(out), "--training.max_steps", "30"])
    assert (cfg.rollout.engine, cfg.algorithm.prompts_per_step, cfg.algorithm.group_size) == ("vllm", 16, 8)
    final = run(cfg)
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, 31))
    assert all(m["rollout_restarts"] == 0 and m["reward_failures"] == 0 for m in metrics)
    assert all(0 <= m["mismatch_kl"] < 1e-5 and m["response_length"] > 0 for m in metrics)  # synced every step
    assert [c.name for c in checkpoints(out)] == ["checkpoint-000030"] and (final / "model.safetensors").is_file()
