"""Recipe dicts for the Ray Train tests: tiny model, 2 workers x 1 CPU x 1 thread."""

import json
import os
import signal
import threading
import time

import torch
from safetensors.torch import load_file

from rayalign.config import RecipeConfig
from rayalign.metrics import read_metrics


def recipe(model_dir, trainer, train_file, out, *, eval_file=None, fmt=None, **training) -> dict:
    fmt = fmt or {"sft": "sft", "pretrain": "text", "dpo": "preference", "kto": "kto", "reward_model": "preference"}[trainer]
    data = {"train": {"format": fmt, "datasets": [{"path": train_file}], "max_length": 96}}
    if eval_file:
        data["eval"] = {"format": fmt, "datasets": [{"path": eval_file}], "max_length": 96, "shuffle": False}
    return {
        "trainer": trainer,
        "model": {"name_or_path": str(model_dir)},
        "data": data,
        "training": {"output_dir": str(out), "learning_rate": 1e-3, "lr_scheduler": "cosine",
                     "warmup_steps": 1, "micro_batch_size": 4, "gradient_accumulation_steps": 1,
                     "max_steps": 4, **training},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1, "torch_threads": 1, "strategy": "fsdp"},
    }


def build(d: dict, **sections) -> RecipeConfig:
    for key, value in sections.items():
        d[key] = {**d.get(key, {}), **value}
    return RecipeConfig.model_validate(d)


def weights(model_dir) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def ours_traceback(stderr: str) -> bool:
    """A traceback anywhere but in Ray Train's PlacementGroupCleaner actor: its State API poll raises in its own
    thread as a run's controller exits on a loaded machine, or when a second Ray runs here (the tests' own;
    Ray 2.60, harmless, not ours)."""
    return any("Traceback" in line and "PlacementGroupCleaner" not in line for line in stderr.splitlines())


def _safe_metrics(out):
    try:
        return read_metrics(out)
    except (json.JSONDecodeError, OSError):  # a line being written
        return []


class WorkerKiller(threading.Thread):
    """SIGKILLs one Ray Train worker of the run writing ``out`` once step ``after`` is logged (with save_steps
    2 and after=3, the step-2 checkpoint is registered by then); ``killed`` holds the step it saw and the pid."""

    def __init__(self, out, after: int):
        super().__init__(daemon=True)
        self.out, self.after, self.killed = out, after, {}
        self.start()

    def run(self):
        import psutil

        deadline = time.time() + 120
        while time.time() < deadline and not any(r["step"] >= self.after for r in _safe_metrics(self.out)):
            time.sleep(0.05)
        workers = [p for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]
        self.killed["step"] = max(r["step"] for r in _safe_metrics(self.out))
        os.kill(workers[-1].pid, signal.SIGKILL)
        self.killed["pid"] = workers[-1].pid
