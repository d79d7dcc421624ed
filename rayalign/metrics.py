"""Run outputs every trainer shares: ``metrics.jsonl`` (one object per logged step), TensorBoard events,
and the phase timer of the RL driver.

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
