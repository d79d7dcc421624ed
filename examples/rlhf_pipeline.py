"""Classic RLHF on letter counting: SFT -> reward model -> PPO with the reward model as its only reward, beside
GRPO on the task's rule reward over the same number of samples.

    python examples/rlhf_pipeline.py --out outputs/rlhf [--overwrite] [--reuse outputs/quickstart]

1. SFT model, on-policy pairs and GRPO: ``--reuse`` takes them from a finished ``make quickstart`` directory (its
   sft/final, data/letter_count_pairs.jsonl, grpo/); without it they are made here as the quickstart makes them;
2. a reward model (configs/recipes/tiny/reward_model.yaml) on 90% of the pairs; its pair accuracy on the other
   10% (``rayalign score``), beside chance and the best one-line rule (longer / shorter / higher or lower count);
3. PPO (configs/recipes/tiny/ppo.yaml): the reward model as the only reward (normalised), the critic started
   from it, the KL to the SFT model folded into the per-token rewards; as many steps x samples as GRPO had;
4. each model on the quickstart's 200 held-out prompts, by the task's checker, beside the best constant answer;
5. ``OUT/results.md``, ``OUT/report.json`` and ``OUT/rlhf.png`` (the PPO and GRPO reward curves, held-out bars).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))
from letter_count_pipeline import (HELD_OUT, held_out_accuracy, make_files, on_policy_pairs, prepare,  # noqa: E402
                                   train)
from quickstart import RECIPES  # noqa: E402

from rayalign import plots  # noqa: E402
from rayalign.config_io import load_config  # noqa: E402
from rayalign.evaluate.reward_model import score_file  # noqa: E402
from rayalign.metrics import read_metrics  # noqa: E402
from rayalign.models.scoring import ScoreModel  # noqa: E402

WRITES = ("tiny-model", "data", "sft", "grpo", "reward_model", "ppo", "eval", "results.md", "report.json", "rlhf.png",
          "ppo_reward.png", "grpo_reward.png")


def split_pairs(pairs: Path, out: Path, held: float = 0.1, seed: int = 0) -> tuple[Path, Path]:
    rows = pairs.read_text().splitlines()
    random.Random(seed).shuffle(rows)
    cut = max(1, int(len(rows) * held))
    paths = out / "data" / "rm_train.jsonl", out / "data" / "rm_held_out.jsonl"
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    paths[0].write_text("\n".join(rows[cut:]) + "\n")
    paths[1].write_text("\n".join(rows[:cut]) + "\n")
    return paths


def _text(value) -> str:
    return value if isinstance(value, str) else " ".join(m.get("content", "") for m in value)


def best_rule(path: Path) -> tuple[str, float]:
    """The best one-line rule on these pairs, as a reward model's floor: the longer or the shorter answer, the
    higher or the lower \\boxed{} count wins (a tie is a coin flip: half)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]

    def count(value) -> int:
        found = re.findall(r"\\boxed\{(\d+)\}", _text(value))
        return int(found[-1]) if found else -1

    rules = {"longer wins": lambda v: len(_text(v)), "shorter wins": lambda v: -len(_text(v)),
             "higher count wins": count, "lower count wins": lambda v: -count(v)}
    shares = {name: sum(1.0 if f(r["chosen"]) > f(r["rejected"]) else 0.5 if f(r["chosen"]) == f(r["rejected"])
                        else 0.0 for r in rows) / len(rows) for name, f in rules.items()}
    return max(shares.items(), key=lambda kv: kv[1])


def starting_point(args: argparse.Namespace, out: Path) -> tuple[Path, Path, Path, dict[str, float]]:
    """(SFT model, pairs file, GRPO output dir, stage seconds): reused from a quickstart or made here."""
    if args.reuse:
        q = Path(args.reuse).resolve()
        need = [q / "sft" / "final", q / "data" / "letter_count_pairs.jsonl", q / "grpo" / "final"]
        missing = [str(p) for p in need if not p.exists()]
        if missing:
            sys.exit(f"error: --reuse {q}: missing {', '.join(missing)} (run `make quickstart` first)")
        return need[0], need[1], q / "grpo", {}
    from rayalign.models.tiny import create_tiny

    seconds: dict[str, float] = {}
    base = create_tiny(out / "tiny-model", vocab=300)
    sft_steps = load_config(RECIPES / "sft.yaml").training.max_steps
    files = make_files(out, sft_steps, 1000)
    start = time.time()
    sft = train("sft.yaml", ["--model.name_or_path", str(base), "--data.train.datasets[0].path", str(files["sft"]),
                             "--data.eval.datasets[0].path", str(files["sft_eval"]),
                             "--training.output_dir", str(out / "sft")])
    seconds["sft"] = time.time() - start
    start = time.time()
    train("grpo.yaml", ["--model.name_or_path", str(sft), "--data.train.datasets[0].path", str(files["grpo"]),
                        "--training.output_dir", str(out / "grpo")])
    seconds["grpo"] = time.time() - start
    pairs, _ = on_policy_pairs(sft, files["dpo"], out)
    return sft, pairs, out / "grpo", seconds


def rlhf(args: argparse.Namespace, out: Path) -> tuple[dict, dict[str, float]]:
    sft, pairs, grpo_dir, seconds = starting_point(args, out)
    grpo_cfg = load_config(grpo_dir / "config.yaml")
    grpo_samples = grpo_cfg.training.max_steps * grpo_cfg.algorithm.prompts_per_step * grpo_cfg.algorithm.group_size

    print("[reward model]")
    rm_train, rm_held = split_pairs(pairs, out)
    start = time.time()
    rm = train("reward_model.yaml", ["--model.name_or_path", str(sft), "--data.train.datasets[0].path", str(rm_train),
                                     "--training.output_dir", str(out / "reward_model")])
    seconds["reward_model"] = time.time() - start
    scored = score_file(lambda: ScoreModel(str(rm), max_length=128, batch_size=64), rm_held,
                        out / "data" / "rm_held_out_scored.jsonl", print)
    rule, share = best_rule(rm_held)
    rm_report = {"held_out_pairs": int(scored["rows"]), "pair_accuracy": scored["pair_accuracy"], "chance": 0.5,
                 "best_rule": rule, "best_rule_accuracy": share}

    print("[PPO with the reward model as the only reward]")
    ppo_cfg = load_config(RECIPES / "ppo.yaml")
    steps = grpo_samples // (ppo_cfg.algorithm.prompts_per_step * ppo_cfg.algorithm.group_size)
    start = time.time()
    train("ppo.yaml", ["--model.name_or_path", str(sft), "--data.train.datasets[0].path",
                       grpo_cfg.data.train.datasets[0].path, "--training.output_dir", str(out / "ppo"),
                       "--training.max_steps", str(steps), "--critic.init", str(rm),
                       "--reward.models[0].path", str(rm)])
    seconds["ppo"] = time.time() - start

    results = {name: held_out_accuracy(model, out / "eval" / name, args.held_out)
               for name, model in (("sft", sft), ("grpo", grpo_dir / "final"), ("ppo", out / "ppo" / "final"))}
    return {"held_out": results, "reward_model": rm_report, "samples": {"grpo": grpo_samples, "ppo": steps * (
        ppo_cfg.algorithm.prompts_per_step * ppo_cfg.algorithm.group_size)}, "grpo_dir": str(grpo_dir)}, seconds


def table(report: dict, seconds: dict[str, float]) -> str:
    r, rm = report["held_out"], report["reward_model"]
    lines = [f"held-out letter counting, {r['sft']['n']} prompts on unseen words; best constant answer: "
             f"{r['sft']['best_constant']:.1%}", "",
             f"reward model: pair accuracy {rm['pair_accuracy']:.1%} on {rm['held_out_pairs']} held-out pairs "
             f"(chance 50%, best one-line rule '{rm['best_rule']}' {rm['best_rule_accuracy']:.1%})", "",
             "| model | reward | samples | greedy | sampled (T=1) | greedy by count 0 / 1 / 2 / 3 | stage time |",
             "|---|---|---|---|---|---|---|"]
    rewards = {"sft": "-", "grpo": "rule (count + trace)", "ppo": "reward model only"}
    for name, res in r.items():
        by_count = " / ".join(f"{v:.0%}" for v in res["accuracy_by_answer"].values())
        lines.append(f"| {name} | {rewards[name]} | {report['samples'].get(name, '-')} | {res['accuracy']:.1%} | "
                     f"{res['sampled_accuracy']:.1%} | {by_count} | "
                     + (f"{seconds[name]:.0f} s |" if name in seconds else "- |"))
    return "\n".join(lines)


def picture(out: Path, report: dict) -> Path:
    """PPO's and GRPO's training reward per step on one page, and the held-out accuracies as bars."""
    best = report["held_out"]["sft"]["best_constant"]
    plots.reward_curve(read_metrics(out / "ppo"), out / "ppo_reward.png", "PPO: reward-model reward (normalised)")
    plots.reward_curve(read_metrics(Path(report["grpo_dir"])), out / "grpo_reward.png", "GRPO: rule reward")
    return plots.results_bars(report["held_out"], ("accuracy", "sampled_accuracy"), out / "rlhf.png",
                              "held-out letter counting (unseen words)", baseline=best)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/rlhf")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    parser.add_argument("--reuse", default=None, help="a finished `make quickstart` directory (SFT, pairs, GRPO)")
    parser.add_argument("--held-out", type=int, default=HELD_OUT["num_samples"])
    args = parser.parse_args(argv)
    out = prepare(args, WRITES)
    began = time.time()
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report, seconds = rlhf(args, out)
    finally:
        if own_ray:
            ray.shutdown()
    seconds["total"] = time.time() - began
    report["seconds"], report["image"] = seconds, str(picture(out, report))
    text = table(report, seconds) + f"\n\nwhole run: {seconds['total'] / 60:.1f} min\n"
    (out / "results.md").write_text(text)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(text)
    return report


if __name__ == "__main__":
    main()
