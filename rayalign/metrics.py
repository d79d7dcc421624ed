"""Run outputs every trainer shares: ``metrics.jsonl`` (one object per logged step), TensorBoard events,
the phase timer of the RL driver, and its per-role series on Ray's metrics export (:class:`RoleGauges`).

Written by rank 0 only. On resume the log is cut back to the restored step, so steps that ran after the
last checkpoint (and will run again) are not listed twice.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


def read_metrics(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class PhaseTimer:
    """``with timer("generate"): ...`` records ``time_generate_s``; ``seconds`` holds every phase."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"time_{phase}_s"] = time.perf_counter() - start


class MetricsLog:
    def __init__(self, output_dir: str | Path, resume_step: int = 0):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        kept = [m for m in read_metrics(self.dir) if m.get("step", 0) <= resume_step]
        (self.dir / METRICS_FILE).write_text("".join(json.dumps(m) + "\n" for m in kept))
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: (v if isinstance(v, (int, str)) or math.isfinite(v) else None)
                                   for k, v in metrics.items()}}
        with (self.dir / METRICS_FILE).open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(key, value, step)
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


class RoleGauges:
    """The RL driver's step metrics per role on Ray's metrics export (Prometheus; Ray prefixes ``ray_``):
    ``rayalign_phase_seconds{run,role,phase}``, ``rayalign_tokens_per_second{run,role}``,
    ``rayalign_samples_per_second{run,role}``, ``rayalign_reward_mean{run}``, ``rayalign_mismatch_kl{run}``,
    ``rayalign_sync_seconds{run}`` and the counter ``rayalign_restarts{run,role}`` (actors replaced; exported
    as ``ray_rayalign_restarts_total``)."""

    PHASES = {"time_generate_s": ("rollout", "generate"), "time_reward_s": ("reward", "score"),
              "time_reference_s": ("reference", "reference"), "time_learner_s": ("learner", "train"),
              "time_sync_s": ("learner", "sync")}

    def __init__(self, run: str):
        from ray.util.metrics import Counter, Gauge

        self.run = run
        role = ("run", "role")
        self.phase = Gauge("rayalign_phase_seconds", "seconds of the last step's phase", ("run", "role", "phase"))
        self.tokens = Gauge("rayalign_tokens_per_second", "completion tokens per second of the role's phase", role)
        self.samples = Gauge("rayalign_samples_per_second", "samples per second of the role's phase", role)
        self.reward = Gauge("rayalign_reward_mean", "mean reward of the last step", ("run",))
        self.mismatch = Gauge("rayalign_mismatch_kl", "KL(rollout engine || learner) on sampled tokens", ("run",))
        self.sync = Gauge("rayalign_sync_seconds", "seconds of the last weight sync", ("run",))
        self.restarts = Counter("rayalign_restarts", "actors of the role replaced", role)
        self.counted: dict[str, int] = {}

    def observe(self, metrics: dict[str, float], samples: int, restarts: dict[str, int]) -> None:
        tokens = metrics.get("response_length", 0.0) * samples
        for key, (role, phase) in self.PHASES.items():
            if key in metrics:
                self.phase.set(metrics[key], {"run": self.run, "role": role, "phase": phase})
        for role, key in (("rollout", "time_generate_s"), ("learner", "time_learner_s"), ("reward", "time_reward_s")):
            if metrics.get(key):
                self.samples.set(samples / metrics[key], {"run": self.run, "role": role})
                if role != "reward":
                    self.tokens.set(tokens / metrics[key], {"run": self.run, "role": role})
        for gauge, key in ((self.reward, "reward_mean"), (self.mismatch, "mismatch_kl"), (self.sync, "time_sync_s")):
            if key in metrics and math.isfinite(metrics[key]):
                gauge.set(metrics[key], {"run": self.run})
        for role, count in restarts.items():
            if count > self.counted.get(role, 0):  # a counter only goes up: the series appears at the first
                self.restarts.inc(float(count - self.counted.get(role, 0)), {"run": self.run, "role": role})
                self.counted[role] = count
