"""Learner backends (``scaling.strategy``): one ``Strategy`` object owns the wrapped model, its optimizer and
scheduler, and the update sequence every loop (``loop.py``, ``rl_step.py``, ``critic_step.py``) runs:

    for i, micro_batch in enumerate(micro_batches):
        with strategy.accumulate(last=i == len(micro_batches) - 1):   # no gradient sync until the last
            strategy.backward(loss * weight)
    grad_norm = strategy.step(max_grad_norm, check)   # clip, check(grad_norm), optimizer, scheduler, zero_grad

Three implementations, chosen once by ``prepare``: ``fsdp`` (FSDP2 ``fully_shard`` of each decoder layer,
the classes named in the model's ``_no_split_modules``, then the root, so embeddings and the tied LM head
live in the root group), ``ddp`` and ``deepspeed`` (ZeRO 1/2/3, ``training/zero.py``). With one worker the
torch strategies do no wrapping. Full state dicts are gathered to rank 0 on CPU with
``torch.distributed.checkpoint.state_dict``, the one API that understands both torch wrappers.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_optimizer_state_dict,
)

from rayalign.checkpoint import OPTIMIZER, CheckpointError

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


class Strategy:
    """The torch strategies' common part: AdamW and the HF scheduler built by the caller, clipping by
    ``clip_grad_norm_`` over the (possibly sharded) gradients, the full optimizer state gathered to rank 0."""
    name = "torch"

    def __init__(self, model: torch.nn.Module, module: torch.nn.Module):
        self.model, self.module = model, module  # ``model``: what the loops call; ``module``: the HF model
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None

    def attach(self, optimizer, scheduler) -> None:
        self.optimizer, self.scheduler = optimizer, scheduler

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def accumulate(self, last: bool):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, max_grad_norm: float | None, check: Callable[[float], None]) -> float:
        """One optimizer update; ``check(grad_norm)`` (the run guards) runs before it and may raise."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm is not None else float("inf"))
        grad_norm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        check(grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def full_model_state(self) -> dict[str, torch.Tensor]:
        """Unsharded CPU state dict on rank 0 (empty elsewhere). A collective: every rank calls it."""
        return get_model_state_dict(self.model, options=FULL)

    def save_optimizer(self, path: Path | None) -> None:
        """The optimizer's state into checkpoint directory ``path`` (rank 0's; None on the others). A collective."""
        state = get_optimizer_state_dict(self.model, self.optimizer, options=FULL)
        if path is not None:
            torch.save(state, path / OPTIMIZER)

    def load_optimizer(self, path: Path) -> None:
        """Every rank reads the same full state; each keeps its shard."""
        from rayalign.checkpoint import load_tensors

        if not (path / OPTIMIZER).is_file():
            raise CheckpointError(f"{path}: it has no {OPTIMIZER} (written by scaling.strategy: deepspeed?); "
                                  f"resume it with the strategy that wrote it")
        set_optimizer_state_dict(self.model, self.optimizer, optim_state_dict=load_tensors(path / OPTIMIZER),
                                 options=StateDictOptions(full_state_dict=True))


class DDPStrategy(Strategy):
    name = "ddp"

    def accumulate(self, last: bool):
        return contextlib.nullcontext() if last else self.model.no_sync()


class FSDP2Strategy(Strategy):
    name = "fsdp"

    @contextlib.contextmanager
    def accumulate(self, last: bool):
        if last:
            yield
            return
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)


def _layer_classes(model: torch.nn.Module) -> set[str]:
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def wrap_torch(model: torch.nn.Module, name: str, device: torch.device) -> Strategy:
    """``model`` on ``device``, wrapped for data-parallel training by the torch strategy ``name``."""
    model.to(device)
    if world()[1] == 1:  # nothing to shard or sync
        return Strategy(model, model)
    if name == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        return DDPStrategy(ddp, model)
    from torch.distributed.fsdp import fully_shard

    layers = _layer_classes(model)
    for module in model.modules():
        if type(module).__name__ in layers:
            fully_shard(module)
    fully_shard(model)
    return FSDP2Strategy(model, model)
