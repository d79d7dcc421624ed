"""The driver of every Ray Train trainer (SFT, pretraining, DPO family): one function, ``run``.

1. validate + tokenise the data on the driver (``recipes/sft.py`` or ``recipes/dpo.py``; the DPO
   family also runs its reference pass there), put the rows in the object store;
2. ``TorchTrainer`` with ``scaling.num_workers`` workers (gloo on CPU, nccl with ``use_gpu``), storage at
   ``OUTPUT_DIR`` (checkpoints in ``OUTPUT_DIR/checkpoints``, ``save_total_limit`` kept), and
   ``FailureConfig(training.max_failures)``: a dead worker restarts the group from the last checkpoint;
3. copy the last checkpoint's model to ``OUTPUT_DIR/final``.

``training.resume: auto`` (``--resume``) continues the run stored in ``OUTPUT_DIR`` (Ray Train restores
its checkpoint list and hands the workers the latest checkpoint). Works the same on the embedded local
Ray and on a cluster (``ray job submit``), where ``OUTPUT_DIR`` must be shared storage.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import ray
import yaml
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from rayalign.checkpoint import MODEL, RUN_NAME, TrainerState, checkpoints, read_state
from rayalign.config import RecipeConfig
from rayalign.data.loading import load_split
from rayalign.errors import RunError, UserError
from rayalign.models.checks import check_model
from rayalign.models.loading import load_tokenizer
from rayalign.recipes import dpo, sft
from rayalign.recipes.common import check_resume, local_paths
from rayalign.training.loop import LoopSpec
from rayalign.workers.train_worker import train_loop_per_worker

PREPARE = {"sft": sft.prepare, "pretrain": sft.prepare, "dpo": dpo.prepare, "kto": dpo.prepare}


def _max_steps(cfg: RecipeConfig, rows: int) -> int:
    t = cfg.training
    global_batch = t.micro_batch_size * t.gradient_accumulation_steps * cfg.scaling.num_workers
    return t.max_steps or max(1, math.ceil(t.num_epochs * rows / global_batch))


def _check_resources(cfg: RecipeConfig) -> None:
    s = cfg.scaling
    have = ray.cluster_resources()
    need_cpu = s.num_workers * s.cpus_per_worker
    if have.get("CPU", 0) < need_cpu:
        raise UserError(f"scaling: Ray Train workers need {s.num_workers} x {s.cpus_per_worker} CPUs = {need_cpu} "
                        f"but the Ray cluster has {have.get('CPU', 0):g}; lower scaling.num_workers or "
                        "scaling.cpus_per_worker")
    if s.use_gpu and have.get("GPU", 0) < s.num_workers:
        raise UserError(f"scaling.use_gpu: {s.num_workers} workers need {s.num_workers} GPUs but the Ray cluster "
                        f"has {have.get('GPU', 0):g}")


def _fit(trainer: TorchTrainer, out: Path):
    """``trainer.fit()``; a user error or a run guard's stop raised inside a worker comes back as that one
    line (a stop names the last checkpoint to resume from)."""
    from ray.train import WorkerGroupError

    try:
        return trainer.fit()
    except WorkerGroupError as exc:
        for rank, failure in sorted(exc.worker_failures.items()):
            cause = getattr(failure, "cause", None) or failure
            if isinstance(cause, UserError):
                raise UserError(f"Ray Train worker rank {rank}: {cause}") from exc
            if isinstance(cause, RunError):
                saved = checkpoints(out)
                where = (f"; the last good checkpoint is {saved[-1].name} (--resume continues from it)" if saved
                         else "; no checkpoint was written before it")
                raise RunError(f"Ray Train worker rank {rank}: {cause}{where}") from exc
        raise


def run(cfg: RecipeConfig, echo=print) -> Path | None:
    """Train ``cfg``; returns ``OUTPUT_DIR/final`` (None when ``stop_after_steps`` ended the launch early)."""
    cfg = local_paths(cfg)
    out = Path(cfg.training.output_dir).resolve()
    splits = {name: load_split(split, cfg.training.seed)  # every row validated before anything starts
              for name, split in (("train", cfg.data.train), ("eval", cfg.data.eval)) if split is not None}
    check_model(cfg.model)  # damaged files, LoRA targets: before any worker loads it
    train_rows, eval_rows = PREPARE[cfg.trainer](cfg, load_tokenizer(cfg.model), splits)
    if not ray.is_initialized():
        ray.init()
    _check_resources(cfg)
    max_steps = _max_steps(cfg, len(train_rows))
    resumed = check_resume(cfg, out, max_steps)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    echo(f"{cfg.trainer}: {len(train_rows)} train rows, {max_steps} steps"
         + (f", resuming after step {resumed.step}" if resumed else ""))
    s = cfg.scaling
    spec = LoopSpec(trainer=cfg.trainer, model=cfg.model, training=cfg.training.model_copy(update={"output_dir": str(out)}),
                    preference=cfg.preference, strategy=s.strategy, use_gpu=s.use_gpu,
                    torch_threads=s.torch_threads, max_steps=max_steps, train_rows=[],
                    shuffle=cfg.data.train.shuffle)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec, "train_rows": ray.put(train_rows),
                           "eval_rows": ray.put(eval_rows) if eval_rows else None},
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                     resources_per_worker={"CPU": s.cpus_per_worker}),
        run_config=RunConfig(name=RUN_NAME, storage_path=str(out),
                             failure_config=FailureConfig(max_failures=cfg.training.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.training.save_total_limit)),
    )
    result = _fit(trainer, out)
    last = Path(result.checkpoint.path) if result.checkpoint else None
    state = read_state(last) if last else TrainerState()
    if state.step < max_steps:
        echo(f"stopped after step {state.step} of {max_steps}; "
             f"continue with --resume (checkpoints in {out / RUN_NAME})")
        return None
    final = out / "final"
    shutil.rmtree(final, ignore_errors=True)
    shutil.copytree(last / MODEL, final)
    (out / "trainer_state.json").write_text(json.dumps(state.__dict__))
    echo(f"final model in {final}")
    return final
