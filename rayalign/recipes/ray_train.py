"""The driver of every Ray Train trainer (SFT, pretraining, DPO family, reward models, vision-language SFT): one
function, ``run``.

1. on the driver: validate the data and the model's files, claim ``OUTPUT_DIR`` (``recipes/output_dir.py``),
   tokenise (``recipes/sft.py``, ``recipes/vl_sft.py`` or ``recipes/dpo.py``), start or join Ray and check its resources, then
   the DPO family's reference pass; the rows go to the object store;
2. ``TorchTrainer`` with ``scaling.num_workers`` workers (gloo on CPU, nccl with ``use_gpu``), storage at
   ``OUTPUT_DIR`` (checkpoints in ``OUTPUT_DIR/checkpoints``, ``save_total_limit`` kept), and
   ``FailureConfig(training.max_failures)``: a dead worker restarts the group from the last checkpoint;
3. copy the last checkpoint's model to ``OUTPUT_DIR/final``.

``training.resume: auto`` (``--resume``) continues the run stored in ``OUTPUT_DIR`` from its latest complete
checkpoint (``recipes/output_dir.py`` decides; the workers get its path). Within a launch, a worker
failure restarts the group from the latest checkpoint Ray Train got. Works the same on the embedded local
Ray and on a cluster (``ray job submit``), where ``OUTPUT_DIR`` must be shared storage. SIGINT/SIGTERM
stop the run at the next step with a checkpoint (``recipes/interrupt.py``).
"""

from __future__ import annotations

import json
import math
import shutil
import threading
from pathlib import Path

import ray
import yaml
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from rayalign import local_ray
from rayalign.checkpoint import MODEL, RUN_NAME, TrainerState, checkpoints, prune, read_state
from rayalign.config import RecipeConfig
from rayalign.data.loading import load_split
from rayalign.errors import RunError, UserError, debugging
from rayalign.models.checks import check_model
from rayalign.models.loading import load_tokenizer
from rayalign.models.vlm import load_processor
from rayalign.recipes import dpo, sft, vl_sft
from rayalign.recipes.common import local_paths
from rayalign.recipes.interrupt import GracefulStop
from rayalign.recipes.output_dir import Claim, check_unfinished, claim
from rayalign.training.loop import LoopSpec
from rayalign.workers.train_worker import train_loop_per_worker

RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it reported
PREPARE = {"sft": sft.prepare, "pretrain": sft.prepare, "dpo": dpo.prepare, "kto": dpo.prepare,
           "reward_model": dpo.prepare, "vl_sft": vl_sft.prepare}


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


def _fit(trainer: TorchTrainer, out: Path, wait=None):
    """``trainer.fit()``; a user error or a run guard's stop raised inside a worker comes back as that one
    line (a stop names the last checkpoint to resume from)."""
    from ray.train import WorkerGroupError

    try:
        return _in_thread(trainer.fit, wait)
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


def _in_thread(fn, wait=None):
    """``fn()`` on a helper thread while the main thread waits: the main thread keeps taking signals, so
    ``GracefulStop`` (not Ray Train's own SIGINT handler, which aborts without a checkpoint) decides.
    ``wait(timeout)`` (a sweep trial's reporter) is what the waiting thread does meanwhile, and once more
    at the end."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the caller as it is
            box["error"] = exc

    thread = threading.Thread(target=target, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        (wait or thread.join)(0.2)
    if wait is not None:
        wait(0.0)
    if "error" in box:
        raise box["error"]
    return box["result"]


def run(cfg: RecipeConfig, echo=print, reporter=None) -> Path | None:
    """Train ``cfg``; returns ``OUTPUT_DIR/final`` (None when ``stop_after_steps`` ended the launch early).
    ``reporter``: a sweep trial's (``tune/trial.py``), which gets every logged step.
    Cheap checks first (data rows, the model's files, the output directory, tokenised rows against the
    step size, the cluster's resources), then the expensive work (the DPO family's reference pass, training)."""
    cfg = local_paths(cfg)
    splits = {name: load_split(split, cfg.training.seed)  # every row validated before anything starts
              for name, split in (("train", cfg.data.train), ("eval", cfg.data.eval)) if split is not None}
    check_model(cfg.model)  # damaged files, LoRA targets: before any worker loads it
    with claim(cfg, echo) as c:
        tokenizer = load_processor(cfg.model) if cfg.trainer == "vl_sft" else load_tokenizer(cfg.model)
        train_rows, eval_rows = PREPARE[cfg.trainer](cfg, tokenizer, splits, echo)
        max_steps = _max_steps(cfg, len(train_rows))
        check_unfinished(c, max_steps)
        local_ray.ensure()
        with GracefulStop(c.out, echo) as stop:  # after ray.init, which sets its own SIGTERM handler
            _check_resources(cfg)
            if cfg.trainer in ("dpo", "kto"):
                train_rows, eval_rows = dpo.with_reference(cfg, train_rows, eval_rows, tokenizer.pad_token_id)
            return _launch(cfg, c, train_rows, eval_rows, max_steps, stop, echo, reporter)


def _launch(cfg: RecipeConfig, c: Claim, train_rows, eval_rows, max_steps: int, stop: GracefulStop,
            echo, reporter=None) -> Path | None:
    out = c.out
    # rayalign's listing decides what to resume from; Ray Train keeps its own list per launch only (its
    # snapshot of an earlier launch could name a checkpoint that was torn or deleted since)
    (out / RUN_NAME / RAY_SNAPSHOT).unlink(missing_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    echo(f"{cfg.trainer}: {len(train_rows)} train rows, {max_steps} steps"
         + (f", resuming after step {c.state.step}" if c.state else ""))
    s = cfg.scaling
    spec = LoopSpec(trainer=cfg.trainer, model=cfg.model, training=cfg.training.model_copy(update={"output_dir": str(out)}),
                    preference=cfg.preference, scaling=s, max_steps=max_steps, train_rows=[],
                    shuffle=cfg.data.train.shuffle, run=c.run, report_logged=reporter is not None)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec, "train_rows": ray.put(train_rows),
                           "eval_rows": ray.put(eval_rows) if eval_rows else None,
                           "resume_from": str(c.resume_from) if c.resume_from else None},
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                     resources_per_worker={"CPU": s.cpus_per_worker}),
        run_config=RunConfig(name=RUN_NAME, storage_path=str(out),
                             failure_config=FailureConfig(max_failures=cfg.training.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.training.save_total_limit),
                             # Ray Train logs a failed worker's whole traceback (worker and controller); ours
                             # is one line (``_fit``): the traceback stays in Ray's log files, or --debug
                             logging_config=LoggingConfig(log_level="INFO" if debugging() else "CRITICAL"),
                             callbacks=reporter.train_callbacks() if reporter else None),
    )
    stop.in_loop = True
    _fit(trainer, out, reporter.pump if reporter else None)
    prune(out, cfg.training.save_total_limit)  # Ray Train prunes this launch's; this counts earlier ones too
    saved = checkpoints(out)
    state = read_state(saved[-1]) if saved else TrainerState()
    if stop.requested:
        raise stop.stopped(state.step, max_steps, saved[-1] if saved else None)
    if state.step < max_steps:
        echo(f"stopped after step {state.step} of {max_steps}; "
             f"continue with --resume (checkpoints in {out / RUN_NAME})")
        return None
    final = out / "final"
    shutil.rmtree(final, ignore_errors=True)
    shutil.copytree(saved[-1] / MODEL, final)
    (out / "trainer_state.json").write_text(json.dumps(state.__dict__))
    echo(f"final model in {final}")
    return final
