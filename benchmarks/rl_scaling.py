"""GRPO on this machine with 1 vs 2 rollout workers and 1 vs 2 learner ranks, and the peak memory (RSS) of
each role's processes (setting: ``rl_setup.py``).

    .venv/bin/python benchmarks/rl_scaling.py [--size 34m] [--steps 6] [--out benchmarks/results/rl_scaling.json]

Threads are split so that each layout uses the machine's 2 cores once: 2 rollout workers x 1 thread, or 2
learner ranks (FSDP2 over gloo) x 1 thread. Peak RSS is each process's high-water mark (VmHWM) read at the
last step, a rollout worker counted with any vLLM process of its own (none since vLLM runs in the actor).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rl_setup import make_inputs, rayalign_config, steady

LAYOUTS = {
    "1 rollout x 2 threads, 1 learner x 2 threads": ({"num_workers": 1, "threads": 2},
                                                     {"num_workers": 1, "cpus_per_worker": 1, "torch_threads": 2}),
    "2 rollout x 1 thread, 1 learner x 2 threads": ({"num_workers": 2, "threads": 1, "num_cpus": 0.25},
                                                    {"num_workers": 1, "cpus_per_worker": 1, "torch_threads": 2}),
    "1 rollout x 2 threads, 2 learners x 1 thread": ({"num_workers": 1, "threads": 2},
                                                     {"num_workers": 2, "cpus_per_worker": 0.5, "torch_threads": 1}),
}


def peak_rss_mib(pid: int) -> float:
    """VmHWM of ``pid`` and every process under it, MiB."""
    import psutil

    total = 0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except (FileNotFoundError, psutil.NoSuchProcess):
            pass
    return total / 1024


class RolePeaks:
    """A run reporter (``recipes/grpo.run(reporter=)``): at each step, the peak RSS of every rayalign actor."""

    def __init__(self):
        self.peaks: dict[str, float] = {}

    def step(self, metrics, checkpoint) -> None:
        from ray.util.state import list_actors

        for actor in list_actors(filters=[("state", "=", "ALIVE")], detail=True):
            if (actor.name or "").startswith("rayalign:"):
                role = actor.name.rsplit(":", 1)[1]
                self.peaks[role] = max(self.peaks.get(role, 0.0), peak_rss_mib(actor.pid))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="34m")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", default="benchmarks/results/rl_scaling.json")
    args = ap.parse_args()
    from rayalign.metrics import read_metrics
    from rayalign.recipes.grpo import run

    results = {"size": args.size, "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_inputs(Path(tmp), args.size)
        for i, (name, (rollout, scaling)) in enumerate(LAYOUTS.items()):
            out = Path(tmp) / f"run{i}"
            peaks = RolePeaks()
            run(rayalign_config(inputs, out, args.steps, rollout=rollout, scaling=scaling), echo=lambda *_: None,
                reporter=peaks)
            rows = read_metrics(out)
            results[name] = {k: steady(rows, k) for k in ("step_time_s", "time_generate_s", "time_learner_s",
                                                           "time_sync_s")}
            results[name]["peak_rss_mib"] = peaks.peaks
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    print("\n| layout | step (s) | generate | learner | sync | peak RSS per role (MiB) |")
    print("|---|---|---|---|---|---|")
    for name in LAYOUTS:
        r = results[name]
        rss = ", ".join(f"{role} {mib:.0f}" for role, mib in sorted(r["peak_rss_mib"].items()))
        print(f"| {name} | {r['step_time_s']:.2f} | {r['time_generate_s']:.2f} | {r['time_learner_s']:.2f} | "
              f"{r['time_sync_s']:.2f} | {rss} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
