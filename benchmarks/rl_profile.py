"""rayalign's GRPO step against the machine's floor, per model size (setting: ``rl_setup.py``).

    .venv/bin/python benchmarks/rl_profile.py [--sizes tiny,34m,100m] [--steps 8]
        [--out benchmarks/results/rl_profile.json]

For each size, in this order (nothing else running):
1. standalone generation: the same vLLM engine settings (2 threads) in this process, the step's 4 prompts x
   8 samples x 128 tokens, median of 3 after a warm-up;
2. standalone learner: one ``PolicyLearner.train_step`` on a batch of that shape (2 torch threads),
   median of 3 after a warm-up;
3. a rayalign GRPO run of ``--steps`` steps (its own Ray), steady-state medians from metrics.jsonl.
Printed: floor = (1) + (2); step / floor (target <= 1.1); rollout efficiency = tokens/s of generation
inside the step / standalone (target >= 0.8); sync seconds and share of the step (target <= 5%), with
the sync's parts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from rl_setup import GROUP, LR, NEW_TOKENS, PROMPTS, make_inputs, rayalign_config, steady


def median_time(fn, reps: int = 3):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def standalone(inputs: dict, cfg) -> dict:
    import torch

    from rayalign.data.collate import collate_rollout, fit_prompt
    from rayalign.data.loading import load_split
    from rayalign.engines.base import SamplingSpec
    from rayalign.engines.build import build_engine
    from rayalign.models.loading import load_tokenizer
    from rayalign.training.loop import build_trainable
    from rayalign.training.rl_step import PolicyLearner

    tokenizer = load_tokenizer(cfg.model)
    rows = [load_split(cfg.data.train, 0)[i] for i in range(PROMPTS)]
    prompts = [fit_prompt(tokenizer, row["prompt"], None)[0] for row in rows]
    spec = SamplingSpec(n=GROUP, temperature=1.0, max_new_tokens=NEW_TOKENS, seed=1)
    engine = build_engine("vllm", cfg.model, max_model_len=cfg.data.train.max_length, threads=cfg.rollout.threads)
    try:
        gen_s, groups = median_time(lambda: engine.generate(prompts, spec))
    finally:
        engine.close()
    tokens = sum(len(c.token_ids) for g in groups for c in g)
    torch.set_num_threads(cfg.scaling.torch_threads)
    batch = collate_rollout([(p, c.token_ids, c.logprobs) for p, g in zip(prompts, groups) for c in g],
                            torch.randn(PROMPTS * GROUP), tokenizer.pad_token_id)
    strategy, _ = build_trainable(cfg.model, cfg.training, cfg.scaling, 100, None, torch.device("cpu"))
    learner = PolicyLearner(strategy, cfg.algorithm, NEW_TOKENS, cfg.training.micro_batch_size, 1.0, 0,
                            torch.device("cpu"))
    learn_s, _ = median_time(lambda: learner.train_step(batch, 0))
    return {"generate_s": gen_s, "generate_tokens_per_s": tokens / gen_s, "learner_s": learn_s,
            "floor_s": gen_s + learn_s}


def in_run(inputs: dict, out: Path, steps: int) -> dict:
    from rayalign.metrics import read_metrics
    from rayalign.recipes.grpo import run

    run(rayalign_config(inputs, out, steps), echo=lambda *_: None)
    rows = read_metrics(out)
    keys = ["step_time_s", "time_generate_s", "time_learner_s", "time_sync_s", "response_length"]
    keys += sorted(k for k in rows[-1] if k.startswith("sync/"))
    return {k: steady(rows, k) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="tiny,34m,100m")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results/rl_profile.json")
    args = ap.parse_args()
    results = {"setting": {"prompts": PROMPTS, "group": GROUP, "new_tokens": NEW_TOKENS, "lr": LR,
                           "cpus": os.cpu_count()}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            inputs = make_inputs(Path(tmp), size)
            cfg = rayalign_config(inputs, Path(tmp) / f"run-{size}", args.steps)
            alone = standalone(inputs, cfg)
            run = in_run(inputs, Path(tmp) / f"run-{size}", args.steps)
            step_tokens = run["response_length"] * PROMPTS * GROUP
            results[size] = {"standalone": alone, "run": run,
                             "step_over_floor": run["step_time_s"] / alone["floor_s"],
                             "rollout_efficiency": step_tokens / run["time_generate_s"] / alone["generate_tokens_per_s"],
                             "sync_share": run["time_sync_s"] / run["step_time_s"]}
            print(f"{size}: {json.dumps(results[size])}", flush=True)
    print("\n| size | step (s) | floor = generate + learner (s) | step / floor | rollout efficiency | sync (s) | "
          "sync share |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        r, a = results[size], results[size]["standalone"]
        print(f"| {size} | {r['run']['step_time_s']:.2f} | {a['floor_s']:.2f} = {a['generate_s']:.2f} + "
              f"{a['learner_s']:.2f} | {r['step_over_floor']:.2f} | {r['rollout_efficiency']:.2f} | "
              f"{r['run']['time_sync_s']:.2f} | {100 * r['sync_share']:.1f}% |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
