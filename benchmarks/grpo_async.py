"""Synchronous vs one-step-off async GRPO (``algorithm.async_steps``) side by side on the letter-count
recipe: step throughput and the reward curves over the same samples.

    make quickstart   # once: the SFT model and prompts this starts from
    .venv/bin/python benchmarks/grpo_async.py [--steps 40] [--out benchmarks/results/grpo_async.json]

Both runs are ``configs/recipes/tiny/grpo.yaml`` (16 prompts x 8 samples a step, the same seeds and
prompt order), ``--steps`` steps each, one after the other on this machine; async adds ``tis_cap: 2`` and
gives generation and learning one core each (they run at once) instead of both cores in turn.
Step time is wall time per step (async phases overlap); the reward is the step's mean reward.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECIPE = "configs/recipes/tiny/grpo.yaml"
WINDOW = 10


def run_one(out: Path, steps: int, async_steps: int) -> list[dict]:
    from rayalign.config_io import load_config
    from rayalign.metrics import read_metrics
    from rayalign.recipes.grpo import run

    overrides = ["--training.output_dir", str(out), "--training.max_steps", str(steps),
                 "--training.save_steps", str(steps), "--algorithm.async_steps", str(async_steps)]
    if async_steps:  # generation and learning run at once: one core each instead of both taking turns
        overrides += ["--algorithm.tis_cap", "2.0", "--rollout.threads", "1", "--scaling.torch_threads", "1"]
    run(load_config(RECIPE, overrides), echo=lambda *_: None)
    return read_metrics(out)


def curve(rows: list[dict], key: str) -> list[float]:
    return [statistics.mean(r[key] for r in rows[i:i + WINDOW]) for i in range(0, len(rows), WINDOW)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default="benchmarks/results/grpo_async.json")
    args = ap.parse_args()
    results = {"recipe": RECIPE, "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        for name, async_steps in (("sync", 0), ("async", 1)):
            rows = run_one(Path(tmp) / name, args.steps, async_steps)
            results[name] = {
                "step_s": statistics.median(r["step_time_s"] for r in rows[2:]),
                "generate_s": statistics.median(r["time_generate_s"] for r in rows[2:]),
                "learner_s": statistics.median(r["time_learner_s"] for r in rows[2:]),
                "reward_curve": curve(rows, "reward_mean"), "accuracy_curve": curve(rows, "accuracy"),
                "mismatch_kl": statistics.median(r["mismatch_kl"] for r in rows[2:]),
                "staleness": statistics.mean(r.get("staleness", 0.0) for r in rows)}
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    s, a = results["sync"], results["async"]
    print(f"\n| | step (s) | samples/s | generate | learner | mismatch_kl | reward per {WINDOW} steps |")
    print("|---|---|---|---|---|---|---|")
    for name, r in (("sync", s), ("async (one-step-off, tis_cap 2)", a)):
        print(f"| {name} | {r['step_s']:.2f} | {128 / r['step_s']:.1f} | {r['generate_s']:.2f} | {r['learner_s']:.2f} "
              f"| {r['mismatch_kl']:.1e} | {' '.join(f'{x:.2f}' for x in r['reward_curve'])} |")
    print(f"async / sync throughput: {s['step_s'] / a['step_s']:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
