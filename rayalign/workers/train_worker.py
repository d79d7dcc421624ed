"""The Ray Train worker: ``TorchTrainer`` runs :func:`train_loop_per_worker` on every worker.

It joins Ray Train's torch.distributed group (set up by ``TorchTrainer``: gloo on CPU, nccl on GPU),
fetches the tokenised rows from the object store, restores the latest checkpoint of this launch that Ray
hands it after a worker failure, or else the one the driver chose for ``--resume``, and runs
``training.loop.train`` with hooks that report metrics and checkpoints back to Ray Train and see the
driver's stop request (a file in ``OUTPUT_DIR``, written when the driver gets SIGINT/SIGTERM).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ray
import ray.train
from ray.experimental.tqdm_ray import tqdm as ray_tqdm

from rayalign.training.loop import Hooks, LoopSpec, train

STOP_FILE = ".stop-requested"  # written into OUTPUT_DIR by the driver on SIGINT/SIGTERM (shared storage)


def _report(metrics: dict, checkpoint_dir: Path | None, name: str) -> None:
    checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)


def train_loop_per_worker(config: dict) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-worker weight loading/saving bars would drown the train bar
    spec: LoopSpec = config["spec"]
    spec = dataclasses.replace(spec, train_rows=ray.get(config["train_rows"]),
                               eval_rows=ray.get(config["eval_rows"]) if config["eval_rows"] else None)
    stop_file = Path(spec.training.output_dir) / STOP_FILE
    hooks = Hooks(restored=config.get("resume_from"), report=_report, progress=ray_tqdm,
                  stop_requested=stop_file.exists)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        train(spec, hooks)
        return
    with checkpoint.as_directory() as restored:
        train(spec, dataclasses.replace(hooks, restored=restored))
