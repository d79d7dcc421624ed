"""The vision demo, run by ``make vision``: VL-SFT, then GRPO on a VLM, on the built-in visual tasks.

    python examples/vision_pipeline.py --out outputs/vision [--grpo-steps 100]

1. a tiny Idefics3 (``rayalign models create-tiny --arch idefics3``) and the visual tasks' rows with their PNGs
   (``rayalign data make``): ``colour`` conversations for SFT, ``shape_colour`` prompts for GRPO;
2. VL-SFT on ``colour`` (Ray Train, 2 FSDP2 workers: configs/recipes/tiny/vl_sft.yaml);
3. GRPO from it on ``shape_colour`` (configs/recipes/tiny/vl_grpo.yaml: vLLM rollouts with multimodal prompts,
   FSDP2 learner, reward worker; reward: the boxed answer);
4. each trained model on 200 held-out images of both tasks, greedy and sampled (4 per image, temperature 1),
   beside the best constant answer (``rayalign evaluate``);
5. ``OUTPUT_DIR/report.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ray

from rayalign.config import EvalConfig
from rayalign.config_io import load_config
from rayalign.data.visual_tasks import generate_visual, write_rows
from rayalign.evaluate.run import evaluate
from rayalign.models.tiny_vlm import create_tiny_vlm

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "recipes" / "tiny"
TASKS = ("colour", "shape_colour")


def held_out(model: Path, out: Path) -> dict:
    cfg = EvalConfig.model_validate({
        "model": {"name_or_path": str(model)}, "engine": "hf", "output_dir": str(out), "temperature": 0.0,
        "tasks": [{"name": t, "kind": "generate", "task": t, "seed": 99, "num_samples": 200, "sampled": 4,
                   "max_new_tokens": 16} for t in TASKS]})
    return evaluate(cfg, echo=lambda _: None)["tasks"]


def train(recipe: str, overrides: list[str]) -> Path:
    from rayalign.recipes import grpo, ray_train

    cfg = load_config(RECIPES / recipe, overrides)
    return (grpo.run if cfg.trainer == "grpo" else ray_train.run)(cfg)


def table(results: dict[str, dict], seconds: dict[str, float]) -> str:
    lines = ["| model | " + " | ".join(f"{t} greedy | {t} sampled | {t} best constant" for t in TASKS) + " | time |",
             "|---|" + "---|---|---|" * len(TASKS) + "---|"]
    for stage, r in results.items():
        cells = " | ".join(f"{r[t]['accuracy']:.1%} | {r[t]['sampled_accuracy']:.1%} | {r[t]['best_constant']:.1%}"
                           for t in TASKS)
        lines.append(f"| {stage} | {cells} | {seconds.get(stage, 0):.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/vision"))
    parser.add_argument("--grpo-steps", type=int, default=100)
    args = parser.parse_args(argv)
    out, data = args.out.resolve(), args.out.resolve() / "data"
    data.mkdir(parents=True, exist_ok=True)
    print("[1/4] tiny Idefics3 and the visual tasks' rows")
    model = create_tiny_vlm(out / "tiny-idefics3", arch="idefics3")
    write_rows(generate_visual("colour", 1920, seed=0), "vl_sft", data / "colour_sft.jsonl")
    write_rows(generate_visual("colour", 16, seed=1), "vl_sft", data / "colour_sft_eval.jsonl")
    write_rows(generate_visual("shape_colour", 2000, seed=3), "vl_prompt", data / "shape_colour_prompt.jsonl")
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results, seconds = {}, {}  # the untrained model's row is the best constant answer's
    try:
        print("[2/4] VL-SFT on colour")
        start = time.time()
        sft = train("vl_sft.yaml", ["--model.name_or_path", str(model), "--training.output_dir", str(out / "vl_sft"),
                                    "--training.overwrite", "true",
                                    "--data.train.datasets[0].path", str(data / "colour_sft.jsonl"),
                                    "--data.eval.datasets[0].path", str(data / "colour_sft_eval.jsonl")])
        seconds["vl_sft"] = time.time() - start
        results["vl_sft"] = held_out(sft, out / "eval" / "vl_sft")
        print("[3/4] GRPO on shape_colour")
        start = time.time()
        tuned = train("vl_grpo.yaml", ["--model.name_or_path", str(sft), "--training.output_dir", str(out / "vl_grpo"),
                                       "--training.overwrite", "true", "--training.max_steps", str(args.grpo_steps),
                                       "--data.train.datasets[0].path", str(data / "shape_colour_prompt.jsonl")])
        seconds["vl_grpo"] = time.time() - start
        results["vl_grpo"] = held_out(tuned, out / "eval" / "vl_grpo")
    finally:
        if own_ray:
            ray.shutdown()
    print("[4/4] report")
    report_table = table(results, seconds)
    (out / "results.md").write_text(report_table + "\n")
    (out / "report.json").write_text(json.dumps({"held_out": results, "seconds": seconds}, indent=2))
    print(report_table)
    return results


if __name__ == "__main__":
    main()
