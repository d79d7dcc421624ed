"""The training loop every Ray Train worker runs for SFT, pretraining, the DPO family and reward models.

Pure torch + torch.distributed: Ray reaches in only through :class:`Hooks` (restore a checkpoint,
report metrics + a checkpoint, draw a progress bar), so the loop reads as plain data-parallel training:

    for step: rows of the step -> micro batches -> loss / global units -> backward (sync on the last)
              -> clip -> optimizer + scheduler -> log -> eval every eval_steps -> save every save_steps
              (and on a stop request: save, then end the launch)

Data position: the order of the training rows is a pure function of (seed, epoch), and global step s
takes rows [s*G, (s+1)*G) of the endless sequence of epochs (G = global batch), split over workers and
micro batches. Each step reseeds torch from (seed, step, rank). So a checkpoint's step count restores
the data position and the RNG exactly, and N steps straight equal N/2 + resume + N/2.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import get_scheduler

from rayalign.checkpoint import (MODEL, TrainerState, load_training_state, save_model_dir, save_training_state,
                                 write_manifest)
from rayalign.config import ModelConfig, PreferenceConfig, ScalingConfig, TrainingConfig
from rayalign.metrics import MetricsLog
from rayalign.models.loading import head_of, load_model, load_tokenizer, load_trainable
from rayalign.models.vlm import load_processor
from rayalign.training import guards, precision, sharding
from rayalign.training.batching import DataOrder, collator, evaluate, step_micro_batches
from rayalign.training.objectives import Objective, make_objective


@dataclass
class LoopSpec:
    """What a worker needs: its config sections and the tokenised rows (shared via the object store)."""
    trainer: str
    model: ModelConfig
    training: TrainingConfig
    preference: PreferenceConfig
    scaling: ScalingConfig  # the strategy (a DeepSpeed JSON already inlined), devices, threads
    max_steps: int
    train_rows: list[dict]
    eval_rows: list[dict] | None = None
    shuffle: bool = True
    run: dict = field(default_factory=dict)  # checkpoint.run_identity: sealed into every checkpoint
    report_logged: bool = False  # report every logged step (a sweep trial's scheduler reads them), not only saves


@dataclass
class Hooks:
    restored: str | None = None  # a local checkpoint directory to resume from
    report: Callable[[dict, Path | None, str], None] = lambda metrics, ckpt, name: None
    progress: Callable[..., Any] | None = None  # tqdm-like factory (rank 0)
    stop_requested: Callable[[], bool] = lambda: False  # a signal asked the run to stop: checkpoint and end


_SCHEDULERS = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}


def _device(use_gpu: bool) -> torch.device:
    if use_gpu:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def build_trainable(model_cfg: ModelConfig, t: TrainingConfig, scaling: ScalingConfig, max_steps: int,
                    restored: str | None, device: torch.device, head: str = "lm",
                    accumulation: int | None = None) -> tuple[sharding.Strategy, TrainerState]:
    """The model wrapped by ``scaling.strategy`` with its AdamW and lr scheduler, and the TrainerState;
    restored from a checkpoint dir when given. ``accumulation``: micro batches per optimizer step on each
    rank (DeepSpeed's config; default ``t.gradient_accumulation_steps``)."""
    torch.manual_seed(t.seed)  # LoRA and a fresh score head must start the same on every rank
    model = load_trainable(model_cfg, str(Path(restored) / MODEL) if restored else None, head)
    model.train()
    model = precision.apply(model, t.mixed_precision, device)

    def schedule(optimizer):
        return get_scheduler(_SCHEDULERS[t.lr_scheduler], optimizer, num_warmup_steps=t.warmup_steps,
                             num_training_steps=max_steps)

    if scaling.strategy == "deepspeed":
        from rayalign.training.zero import DeepSpeedStrategy, ds_config

        config = ds_config(scaling, t, accumulation or t.gradient_accumulation_steps, model_cfg.dtype)
        strategy: sharding.Strategy = DeepSpeedStrategy(model, config, schedule, device)
    else:
        strategy = sharding.wrap_torch(model, scaling.strategy, device)
        optimizer = torch.optim.AdamW([p for p in strategy.model.parameters() if p.requires_grad],
                                      lr=t.learning_rate, weight_decay=t.weight_decay)
        strategy.attach(optimizer, schedule(optimizer))
    state = TrainerState()
    if restored:
        sched_state, state = load_training_state(restored)
        strategy.load_optimizer(Path(restored))
        strategy.scheduler.load_state_dict(sched_state)
        configured_learning_rate(strategy.optimizer, strategy.scheduler, t.learning_rate)
    return strategy, state


def configured_learning_rate(optimizer, scheduler, lr: float) -> None:
    """The recipe's learning rate wins over the checkpoint's (a resumed run whose recipe changed it, or a
    PBT trial whose explore step did): the schedule goes on from the restored step with ``lr`` as its peak.
    With the same ``lr`` this recomputes the restored value exactly."""
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _reference(spec: LoopSpec, device: torch.device):
    """Online reference log-probs: a frozen copy of the initial policy on every worker."""
    if spec.trainer not in ("dpo", "kto") or spec.preference.reference != "online":
        return None
    ref = load_model(spec.model, apply_lora=False).to(device).eval().requires_grad_(False)

    def logps(ids, mask, labels):
        from rayalign.models.logprobs import sequence_logps

        with torch.no_grad():
            return sequence_logps(ref, ids, mask, labels)[0]
    return logps


def train(spec: LoopSpec, hooks: Hooks) -> TrainerState:
    """Run (or continue) training to ``spec.max_steps`` or this launch's ``stop_after_steps``."""
    if spec.scaling.torch_threads:
        torch.set_num_threads(spec.scaling.torch_threads)
    rank, world = sharding.world()
    device = _device(spec.scaling.use_gpu)
    t = spec.training
    strategy, state = build_trainable(spec.model, t, spec.scaling, spec.max_steps, hooks.restored, device,
                                      head_of(spec.trainer))
    # a vision-language model's processor (tokenizer + image processor) collates and is saved beside the model
    tokenizer = load_processor(spec.model) if spec.trainer == "vl_sft" else load_tokenizer(spec.model)
    pad_id = getattr(tokenizer, "tokenizer", tokenizer).pad_token_id  # a processor holds its tokenizer
    collate = collator(spec.trainer, pad_id, tokenizer)
    objective = make_objective(spec.trainer, spec.preference, _reference(spec, device), device)
    order = DataOrder(len(spec.train_rows), t.micro_batch_size * t.gradient_accumulation_steps * world,
                      t.seed, spec.shuffle)
    stop_at = min(spec.max_steps, state.step + (t.stop_after_steps or spec.max_steps))
    log = MetricsLog(t.output_dir, state.step) if rank == 0 else None
    bar = hooks.progress(total=spec.max_steps, desc="train") if rank == 0 and hooks.progress else None
    if bar is not None:
        bar.update(state.step)
    while state.step < stop_at:
        torch.manual_seed(t.seed * 1_000_003 + state.step * 1009 + rank)
        batches = step_micro_batches(spec, order, state.step, rank, world, collate)
        metrics = _optimizer_step(strategy, objective, batches, t.max_grad_norm, device, state.step + 1)
        state.step += 1
        state.samples_seen += order.global_batch
        state.epoch = state.samples_seen / order.n
        metrics["epoch"] = state.epoch
        if spec.eval_rows and (state.step == spec.max_steps or (t.eval_steps and state.step % t.eval_steps == 0)):
            metrics.update(evaluate(strategy.model, objective, spec.eval_rows, t.micro_batch_size, rank, world,
                                    collate, spec.trainer, device))
        stopping = bool(sharding.all_reduce_sum([float(hooks.stop_requested())], device)[0])  # every rank agrees
        if log and (state.step % t.logging_steps == 0 or state.step == stop_at or stopping):
            log.log(state.step, metrics)
        if bar is not None:
            bar.set_description(f"train loss {metrics['loss']:.4f}")
            bar.update(1)
        if state.step == stop_at or stopping or (t.save_steps and state.step % t.save_steps == 0):
            _save(spec, strategy, state, tokenizer, hooks, metrics, rank)
        elif spec.report_logged and state.step % t.logging_steps == 0:  # a sweep's trial: every logged step
            hooks.report(_reported(state, metrics), None, "")
        if stopping:
            break
    if log:
        log.close()
    if bar is not None:
        bar.close()
    return state


def _optimizer_step(strategy: sharding.Strategy, objective: Objective, batches, max_grad_norm, device,
                    step: int) -> dict:
    """Optimizer step ``step`` over this worker's micro batches; metrics averaged over all workers. A
    non-finite loss or gradient norm stops the run before the update (``guards``; DeepSpeed: the norm after)."""
    start = time.perf_counter()
    units = sum(objective.units(b) for b in batches)
    total_units = sharding.all_reduce_sum([units], device)[0]
    world = sharding.world()[1]
    loss_sum, tokens, sums = 0.0, 0.0, {}
    for i, batch in enumerate(batches):
        batch = batch.to(device)
        with strategy.accumulate(last=i == len(batches) - 1):
            loss, metrics = objective.loss(strategy.model, batch)
            strategy.backward(loss * world / total_units)
        loss_sum += loss.item()
        tokens += float(batch.attention_mask.sum())
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + value / len(batches)
    lr = strategy.lr()
    keys = sorted(sums)
    reduced = sharding.all_reduce_sum([loss_sum, tokens] + [sums[k] for k in keys], device)
    loss = reduced[0] / total_units
    grad_norm = strategy.step(max_grad_norm, lambda norm: guards.check_step(step, loss=loss, grad_norm=norm))
    elapsed = time.perf_counter() - start
    out = {"loss": loss, "lr": lr, "grad_norm": grad_norm,
           "tokens_per_s": reduced[1] / elapsed, "step_time_s": elapsed}
    out.update({k: v / world for k, v in zip(keys, reduced[2:])})
    return out


def write_checkpoint(model_cfg: ModelConfig, strategy: sharding.Strategy, state: TrainerState, tokenizer,
                     rank: int, run: dict, extra: dict[str, str] | None = None, head: str = "lm",
                     dirs: dict[str, str] | None = None) -> Path | None:
    """Gather the full model and the optimizer state (collectives: every rank calls this) and write a
    checkpoint into a fresh temporary directory on rank 0, with the ``extra`` files (name -> text) and the
    ``dirs`` (name -> a directory moved in, e.g. PPO's critic), sealed with its manifest last; returns it
    there (the caller moves or removes it)."""
    model_state = strategy.full_model_state()
    if rank == 0:
        guards.check_weights(state.step, model_state)
    tmp = Path(tempfile.mkdtemp(prefix="rayalign-ckpt-")) if rank == 0 else None
    strategy.save_optimizer(tmp)
    if tmp is None:
        return None
    merge_from = (lambda: load_model(model_cfg, apply_lora=False, head=head)) if (
        model_cfg.lora and model_cfg.lora.save_merged) else None
    save_model_dir(tmp / MODEL, strategy.module, model_state, tokenizer, merge_from)
    save_training_state(tmp, strategy.scheduler, state)
    for name, text in (extra or {}).items():
        (tmp / name).write_text(text)
    for name, directory in (dirs or {}).items():
        shutil.move(directory, tmp / name)
    write_manifest(tmp, state, run)
    return tmp


def _save(spec, strategy, state, tokenizer, hooks: Hooks, metrics, rank) -> None:
    tmp = write_checkpoint(spec.model, strategy, state, tokenizer, rank, spec.run, head=head_of(spec.trainer))
    hooks.report(_reported(state, metrics), tmp, f"checkpoint-{state.step:06d}")
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


def _reported(state: TrainerState, metrics: dict) -> dict:
    finite = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    return {"step": state.step, **finite}
