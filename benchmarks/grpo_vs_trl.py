"""rayalign GRPO vs TRL's GRPOTrainer, side by side on this machine (setting: ``rl_setup.py``).

    .venv/bin/python benchmarks/grpo_vs_trl.py [--sizes tiny,34m] [--reps 3] [--steps 10] [--precision fp32]
        [--sides rayalign,trl] [--out benchmarks/results/grpo_vs_trl_<precision>.json]

``--precision bf16``: TRL's default (``bf16=True``: autocast over its model, which trains and generates)
against rayalign's learner under bf16 autocast with its engine in bfloat16. ``--sides`` may add
``rayalign-async`` (``algorithm.async_steps: 1``, ``tis_cap: 2``: generation overlaps the learner, one core each).

Same model, prompts, reward (``letter_count``), group size, completion length, batch, learning rate and
steps. Each run is its own process (a fresh Ray for rayalign; TRL with 2 torch threads and its HF
generation); runs alternate A B A B over ``--reps`` repetitions, and each side's number is the median over
repetitions of the median steady step (the first 2 steps of each run are left out). rayalign's per-phase
seconds come from its metrics.jsonl; TRL's generation time from its own profiling timer. "First step ends at": seconds from the
process's start (imports, Ray, engine and model loading) to the end of step 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rl_setup import GROUP, LR, NEW_TOKENS, PRECISIONS, PROMPTS, SKIP, make_inputs, rayalign_config, steady

PHASES = ("time_generate_s", "time_reward_s", "time_learner_s", "time_sync_s")
SIDES = {"rayalign": {},  # the phases take turns, each with both cores
         "rayalign-async": {"algorithm": {"async_steps": 1, "tis_cap": 2.0},  # at once, one core each
                            "scaling": {"torch_threads": 1}, "rollout": {"threads": 1}},
         "trl": None}


def since_start() -> float:
    """Seconds since this process started (the ``python`` command, imports included)."""
    import psutil

    return time.time() - psutil.Process().create_time()


class FirstStep:
    """A sweep-trial style reporter (``recipes/grpo.run(reporter=)``): when the first step ended."""
    at_s: float | None = None

    def step(self, metrics, checkpoint) -> None:
        self.at_s = self.at_s or since_start()


def run_rayalign(inputs: dict, out: Path, steps: int, precision: str, side: str) -> dict:
    from rayalign.metrics import read_metrics
    from rayalign.recipes.grpo import run

    first = FirstStep()
    run(rayalign_config(inputs, out, steps, precision, **SIDES[side]), echo=lambda *_: None, reporter=first)
    rows = read_metrics(out)
    tokens = steady(rows, "response_length") * PROMPTS * GROUP
    return {"step_s": steady(rows, "step_time_s"), "completion_tokens": tokens, "first_step_at_s": first.at_s,
            **{p: steady(rows, p) for p in PHASES}, "sync_parts": {k: steady(rows, k) for k in rows[-1]
                                                                   if k.startswith("sync/")}}


def run_trl(inputs: dict, out: Path, steps: int, precision: str, side: str = "trl") -> dict:
    import torch
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras.profiling import ProfilingContext

    from rayalign.rewards.builtin import letter_count

    torch.set_num_threads(2)
    times, lengths, first = [], [], FirstStep()
    generate_s: list[float] = []  # TRL times its phases for W&B / MLflow only: keep its generation's here
    original = ProfilingContext._log_metrics

    def keep(self, duration: float) -> None:
        if self.name.endswith(".transformers.generate"):  # "GRPOTrainer.transformers.generate"
            generate_s.append(duration)
        original(self, duration)

    ProfilingContext._log_metrics = keep

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)
            first.step(None, None)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    def reward(prompts, completions, word, letter, **_):
        return [letter_count(p, c[0]["content"], word=w, letter=x) for p, c, w, x in zip(prompts, completions, word, letter)]

    config = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
        max_completion_length=NEW_TOKENS, temperature=1.0, learning_rate=LR, lr_scheduler_type="constant",
        beta=0.0, loss_type="dapo", max_steps=steps, logging_steps=1, report_to=[], save_strategy="no",
        use_cpu=True, dataloader_num_workers=0, max_grad_norm=1.0, seed=0,
        bf16=precision == "bf16")  # GRPOConfig's default is bf16=True (autocast; on this CPU: AMX matmuls)
    dataset = load_dataset("json", data_files=str(inputs["prompts"]), split="train")
    GRPOTrainer(model=str(inputs["model"]), reward_funcs=reward, args=config, train_dataset=dataset,
                callbacks=[Timer()]).train()
    return {"step_s": statistics.median(times[SKIP:]), "first_step_at_s": first.at_s,
            **({"time_generate_s": statistics.median(generate_s[SKIP:])} if len(generate_s) > SKIP else {}),
            "completion_tokens": statistics.median(lengths[SKIP:]) * PROMPTS * GROUP}


def one(args) -> None:
    """One run in this process (the child of ``main``); its result as JSON on the last stdout line."""
    root = Path(args.root)
    inputs = make_inputs(root, args.size)
    with tempfile.TemporaryDirectory(dir=root) as out:
        fn = run_trl if args.one == "trl" else run_rayalign
        result = fn(inputs, Path(out) / "run", args.steps, args.precision, args.one)
    print("RESULT " + json.dumps(result), flush=True)


def child(side: str, size: str, steps: int, precision: str, root: Path) -> dict:
    cmd = [sys.executable, __file__, "--one", side, "--size", size, "--steps", str(steps), "--root", str(root),
           "--precision", precision]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{side} {size} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def summary(runs: list[dict]) -> dict:
    out = {"step_s": statistics.median(r["step_s"] for r in runs), "step_s_runs": [r["step_s"] for r in runs],
           "completion_tokens": statistics.median(r["completion_tokens"] for r in runs),
           "first_step_at_s": statistics.median(r["first_step_at_s"] for r in runs)}
    for key in PHASES:
        if key in runs[0]:
            out[key] = statistics.median(r[key] for r in runs)
    if runs[0].get("sync_parts"):
        out["sync_parts"] = {k: statistics.median(r["sync_parts"][k] for r in runs) for k in runs[0]["sync_parts"]}
    out["samples_per_s"] = PROMPTS * GROUP / out["step_s"]
    out["tokens_per_s"] = out["completion_tokens"] / out["step_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="tiny,34m")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32")
    ap.add_argument("--sides", default="rayalign,trl", help=f"of {', '.join(SIDES)}, in run order")
    ap.add_argument("--out", help="default: benchmarks/results/grpo_vs_trl_<precision>.json")
    ap.add_argument("--one", choices=list(SIDES), help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args)
    sides = args.sides.split(",")
    if "trl" not in sides or not set(sides) <= set(SIDES):
        raise SystemExit(f"--sides: some of {', '.join(SIDES)}, trl among them")
    out = Path(args.out or f"benchmarks/results/grpo_vs_trl_{args.precision}.json")
    results = {"setting": {"prompts": PROMPTS, "group": GROUP, "new_tokens": NEW_TOKENS, "steps": args.steps,
                           "reps": args.reps, "skip": SKIP, "precision": args.precision}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            runs: dict[str, list] = {side: [] for side in sides}
            for rep in range(args.reps):
                for side in sides:  # A B A B
                    runs[side].append(child(side, size, args.steps, args.precision, Path(tmp)))
                    print(f"{size} rep {rep + 1} {side}: step {runs[side][-1]['step_s']:.2f} s", flush=True)
            results[size] = {side: summary(runs[side]) for side in sides}
            for side in sides:
                results[size][side]["vs_trl"] = results[size]["trl"]["step_s"] / results[size][side]["step_s"]
    print(f"\n{args.precision}\n| size | framework | step (s) | samples/s | tokens/s | generate | learner | sync | "
          "vs TRL | first step ends at (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        for side in ["trl"] + [s for s in sides if s != "trl"]:
            r = results[size][side]
            phases = [f"{r[k]:.2f}" if k in r else "-" for k in ("time_generate_s", "time_learner_s", "time_sync_s")]
            print(f"| {size} | {side} | {r['step_s']:.2f} | {r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
                  + " | ".join(phases) + f" | {r['vs_trl']:.2f}x | {r['first_step_at_s']:.0f} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
