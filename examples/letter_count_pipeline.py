"""The learning demo, run by ``make quickstart``: SFT, then DPO and GRPO side by side, on letter counting.

    python examples/letter_count_pipeline.py --out outputs/quickstart [--overwrite]

1. a tiny Qwen2 whose tokenizer is about one token per letter, and letter-count data: counts 0-3 evenly,
   answered with a running count (``s0 t0 r1 a1 w1 b1 e1 r2 r3 y3 \\boxed{3}``), half on real words (a
   fifth of the word list held out for testing) and half on random letter strings, so the model must
   read the word rather than recall it;
2. SFT (Ray Train, 2 FSDP2 workers: configs/recipes/tiny/sft.yaml), kept short so RL has room to improve;
3. GRPO from the SFT model (configs/recipes/tiny/grpo.yaml: vLLM rollout, FSDP2 learner, reward worker;
   reward: the right count plus the share of the running-count trace that is right);
4. DPO from the same SFT model (configs/recipes/tiny/dpo.yaml) on the SFT model's own answers: 4 sampled per
   prompt by vLLM workers (``rayalign infer``), best vs. worst by the task reward (``rayalign data pairs``);
5. each model on 200 held-out prompts (words no stage trained on): greedy and sampled accuracy beside the
   best constant answer's score, accuracy per count, \\boxed{} format rate, answer length
   (``rayalign evaluate``);
6. the three trained models side by side on 8 held-out prompts (``rayalign compare``);
7. ``OUTPUT_DIR/report.json``, ``results.md`` (the table) and PNGs: GRPO reward, DPO loss and margin,
   the final table as bars.

The README records what this measured on a 2-core machine and why these settings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart import RECIPES, write_task_file  # noqa: E402  (the data and model half of the quickstart)

from rayalign import compare, plots  # noqa: E402
from rayalign.config import EvalConfig, InferConfig, ModelConfig  # noqa: E402
from rayalign.config_io import load_config  # noqa: E402
from rayalign.data.pairs import pairs_file  # noqa: E402
from rayalign.engines.base import SamplingSpec  # noqa: E402
from rayalign.evaluate.run import evaluate  # noqa: E402
from rayalign.metrics import read_metrics  # noqa: E402

HELD_OUT = {"seed": 99, "num_samples": 200}  # letter_count's test split: held-out words only
STAGES = ("base", "sft", "dpo", "grpo")


def held_out_accuracy(model: Path, out: Path, n: int) -> dict:
    """``rayalign evaluate`` of one model on the held-out prompts (the HF engine: the tiny model's answers
    take seconds; vLLM's start would cost more than it saves)."""
    cfg = EvalConfig.model_validate({
        "model": {"name_or_path": str(model)}, "engine": "hf", "output_dir": str(out), "temperature": 0.0,
        "tasks": [{"name": "letter_count", "kind": "generate", "task": "letter_count", "split": "test",
                   "seed": HELD_OUT["seed"], "num_samples": n, "sampled": 4, "max_new_tokens": 64}]})
    return evaluate(cfg, echo=lambda _: None)["tasks"]["letter_count"]


def train(recipe: str, overrides: list[str]) -> Path:
    from rayalign.recipes import grpo, ray_train

    cfg = load_config(RECIPES / recipe, overrides)
    return (grpo.run if cfg.trainer == "grpo" else ray_train.run)(cfg)


def on_policy_pairs(sft: Path, prompts: Path, out: Path) -> tuple[Path, dict]:
    """The SFT model's own answers (4 per prompt, temperature 1, vLLM workers), best vs. worst by reward."""
    from rayalign.inference import batch

    samples = out / "data" / "letter_count_sft_samples.jsonl"
    batch(ModelConfig(name_or_path=str(sft)), InferConfig(n=4, temperature=1.0, max_new_tokens=64, max_model_len=256,
                                                          num_cpus=1.0, chunk_size=256),
          prompts, samples, echo=print)
    path = out / "data" / "letter_count_pairs.jsonl"
    return path, pairs_file(samples, path, ["letter_count"])


def table(results: dict[str, dict], seconds: dict[str, float]) -> str:
    best = results["sft"]["best_constant"]
    lines = [f"held-out letter counting, {results['sft']['n']} prompts on unseen words; best constant answer "
             f"('{results['sft']['best_constant_answer']}'): {best:.1%}", "",
             "| model | greedy | sampled (T=1) | greedy by count 0 / 1 / 2 / 3 | \\boxed{} format | answer tokens "
             "| stage time |", "|---|---|---|---|---|---|---|"]
    for stage, r in results.items():
        by_count = " / ".join(f"{v:.0%}" for v in r["accuracy_by_answer"].values())
        lines.append(f"| {stage} | {r['accuracy']:.1%} | {r['sampled_accuracy']:.1%} | {by_count} | "
                     f"{r['format_rate']:.0%} | {r['mean_answer_tokens']:.1f} | "
                     + (f"{seconds[stage]:.0f} s |" if stage in seconds else "- |"))
    return "\n".join(lines + ["", f"whole run: {seconds['total'] / 60:.1f} min (stage times include their Ray "
                                   "start-up; DPO's includes sampling the pairs)"])


def pictures(out: Path, results: dict[str, dict]) -> list[Path]:
    grpo_metrics, dpo_metrics = read_metrics(out / "grpo"), read_metrics(out / "dpo")
    best = results["sft"]["best_constant"]
    held_out = {0: results["sft"]["accuracy"], grpo_metrics[-1]["step"]: results["grpo"]["accuracy"]}
    return [
        plots.reward_curve(grpo_metrics, out / "grpo_reward.png", "GRPO on letter counting: reward (right count + "
                           "right trace) per step", held_out=held_out, baseline=best),
        plots.preference_curves(dpo_metrics, out / "dpo_curves.png", "DPO on the SFT model's ranked answers"),
        plots.results_bars({s: results[s] for s in results}, ("accuracy", "sampled_accuracy", "format_rate"),
                           out / "results.png", "held-out letter counting (unseen words)", baseline=best),
    ]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/quickstart", help="where everything is written")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    parser.add_argument("--sft-steps", type=int, default=None, help="override sft.yaml's max_steps")
    parser.add_argument("--dpo-prompts", type=int, default=1000, help="prompts whose sampled answers make DPO pairs")
    parser.add_argument("--grpo-steps", type=int, default=None, help="override grpo.yaml's max_steps")
    parser.add_argument("--held-out", type=int, default=HELD_OUT["num_samples"], help="held-out prompts")
    return parser.parse_args(argv)


WRITES = ("tiny-model", "data", "sft", "grpo", "dpo", "eval", "compare.jsonl", "results.md", "report.json",
          "grpo_reward.png", "dpo_curves.png", "results.png")  # what a run puts in --out; --overwrite removes only these


def prepare(args: argparse.Namespace, writes: tuple[str, ...] = WRITES) -> Path:
    """``args.out`` resolved, with an earlier run's ``writes`` removed when ``args.overwrite`` (else exit)."""
    out = Path(args.out).resolve()
    earlier = [out / name for name in writes if (out / name).exists()]
    if earlier and not args.overwrite:
        sys.exit(f"error: {out} holds an earlier run; pass --overwrite to replace it, or --out elsewhere")
    for path in earlier:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return out


def make_files(out: Path, sft_steps: int, dpo_prompts: int) -> dict[str, Path]:
    return {"sft": write_task_file(out, "letter_count_sft", "sft", sft_steps * 32, 1),  # fresh rows every step
            "sft_eval": write_task_file(out, "letter_count_sft_eval", "sft", 200, 2),
            "grpo": write_task_file(out, "letter_count_prompt", "prompt", 4000, 3),
            "dpo": write_task_file(out, "letter_count_dpo_prompts", "prompt", dpo_prompts, 4),
            "text": write_task_file(out, "letter_count_text", "text", 200, 0)}  # configs/eval/tiny.yaml's perplexity


def stages(args: argparse.Namespace, out: Path) -> tuple[dict[str, Path], dict[str, dict], dict[str, float], dict]:
    """Every model (base, SFT, GRPO, DPO) trained and measured on the held-out prompts after its stage.
    GRPO runs before DPO only so that it starts on a Ray with nothing left over from other stages."""
    from rayalign.models.tiny import create_tiny

    print("[1/6] tiny model + data")
    models = {"base": create_tiny(out / "tiny-model", vocab=300)}
    sft_steps = args.sft_steps or load_config(RECIPES / "sft.yaml").training.max_steps
    files = make_files(out, sft_steps, args.dpo_prompts)
    results = {"base": held_out_accuracy(models["base"], out / "eval" / "base", args.held_out)}
    seconds: dict[str, float] = {}

    print("[2/6] SFT")
    start = time.time()
    models["sft"] = train("sft.yaml", [
        "--model.name_or_path", str(models["base"]), "--data.train.datasets[0].path", str(files["sft"]),
        "--data.eval.datasets[0].path", str(files["sft_eval"]), "--training.output_dir", str(out / "sft"),
        "--training.max_steps", str(sft_steps)])
    seconds["sft"] = time.time() - start
    results["sft"] = held_out_accuracy(models["sft"], out / "eval" / "sft", args.held_out)

    print("[3/6] GRPO")
    start = time.time()
    models["grpo"] = train("grpo.yaml", [
        "--model.name_or_path", str(models["sft"]), "--data.train.datasets[0].path", str(files["grpo"]),
        "--training.output_dir", str(out / "grpo")] + (["--training.max_steps", str(args.grpo_steps)]
                                                       if args.grpo_steps else []))
    seconds["grpo"] = time.time() - start
    results["grpo"] = held_out_accuracy(models["grpo"], out / "eval" / "grpo", args.held_out)

    print("[4/6] DPO on the SFT model's own answers")
    start = time.time()
    pairs, counts = on_policy_pairs(models["sft"], files["dpo"], out)
    print(f"  {counts['pairs']} pairs from {counts['prompts']} prompts ({counts['all_same']} had 4 answers "
          "that all scored the same)")
    models["dpo"] = train("dpo.yaml", ["--model.name_or_path", str(models["sft"]), "--data.train.datasets[0].path",
                                       str(pairs), "--training.output_dir", str(out / "dpo")])
    seconds["dpo"] = time.time() - start
    results["dpo"] = held_out_accuracy(models["dpo"], out / "eval" / "dpo", args.held_out)
    return models, {s: results[s] for s in STAGES}, seconds, counts


def side_by_side(models: dict[str, Path], out: Path) -> None:
    print("[5/6] side by side: rayalign compare")
    contenders = compare.open_models([(s, str(models[s])) for s in STAGES[1:]], "hf", 256)
    try:
        compare.fixed(contenders, compare.load_prompts(None, "letter_count", 8, HELD_OUT["seed"]),
                      SamplingSpec(temperature=0, max_new_tokens=64), compare.reward_for(["letter_count"]),
                      out / "compare.jsonl", print)
    finally:
        compare.close(contenders)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    out = prepare(args)
    began = time.time()
    own_ray = not ray.is_initialized()  # a test session may share its Ray
    if own_ray:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        models, results, seconds, counts = stages(args, out)
    finally:
        if own_ray:
            ray.shutdown()
    side_by_side(models, out)

    print("[6/6] report")
    seconds["total"] = time.time() - began
    report_table = table(results, seconds)
    (out / "results.md").write_text(report_table + "\n")
    images = pictures(out, results)
    report = {"held_out": results, "seconds": seconds, "dpo_pairs": counts, "images": [str(p) for p in images]}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(report_table)
    print(f"whole run {seconds['total'] / 60:.1f} min; report: {out / 'report.json'}; pictures: "
          f"{', '.join(p.name for p in images)}")
    return report


if __name__ == "__main__":
    main()
