"""DeepSpeed ZeRO as a learner backend (``scaling.strategy: deepspeed``): the DeepSpeed config, and the
``Strategy`` that drives a DeepSpeed engine through the same update sequence as FSDP2 (``sharding.py``).

The config (``ds_config``) comes from the typed fields (``scaling.deepspeed``: ZeRO stage, optimizer and
parameter offload) and the recipe's training fields, merged with the user's own DeepSpeed JSON
(``scaling.deepspeed_config``, inlined on the driver so workers on other nodes need no file). A key both
define must agree (``"auto"`` takes ours); a disagreement is one error naming the key and both values.
DeepSpeed builds the optimizer (AdamW: torch's, or DeepSpeedCPUAdam when the optimizer is offloaded) and
clips; the schedule is the recipe's (``training.lr_scheduler``), stepped by the engine.

Differences from FSDP2 a user sees: the run guard reads the gradient norm after DeepSpeed's step (it is
computed inside it), so a non-finite norm stops the run one update late (the last checkpoint is good); the
optimizer state is DeepSpeed's own checkpoint (``deepspeed/`` in each checkpoint, every rank's shard
gathered onto rank 0), readable by DeepSpeed's tools (``zero_to_fp32.py``); ``model/`` is the same HF
directory (ZeRO-3 parameters gathered). On CPU (``DS_ACCELERATOR=cpu``) DeepSpeed talks over the gloo
group Ray Train or the learner set up; its shared-memory collective is built once per machine (~1 min).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from rayalign.checkpoint import CheckpointError
from rayalign.errors import UserError
from rayalign.training.guards import NonFiniteError
from rayalign.training.sharding import Strategy, world

DEEPSPEED = "deepspeed"  # the engine's checkpoint directory inside a checkpoint
TAG = "state"


def _set(out: dict, path: str, ours: Any, where: str) -> None:
    """``out[path] = ours`` unless the user's config holds another value there (``"auto"`` is ours)."""
    *parents, key = path.split(".")
    node = out
    for part in parents:
        node = node.setdefault(part, {})
    theirs = node.get(key, "auto")
    if theirs != "auto" and theirs != ours and not (isinstance(ours, float) and isinstance(theirs, (int, float))
                                                   and abs(theirs - ours) <= 1e-12 * max(abs(ours), 1.0)):
        raise UserError(f"{where}: {path} is {theirs!r} but the recipe gives {ours!r}; remove it from the "
                        "DeepSpeed config (or set it to \"auto\") or make them agree")
    node[key] = ours


def ds_config(scaling, training, accumulation: int, dtype: str = "float32") -> dict:
    """The DeepSpeed config of a run: the user's ``scaling.deepspeed_config`` (a dict by now, see
    ``recipes/common.local_paths``) with every key the recipe decides filled in or checked against it.
    ``accumulation``: micro batches per optimizer step on each rank."""
    where = "scaling.deepspeed_config"
    user = scaling.deepspeed_config or {}
    if isinstance(user, str):
        raise UserError(f"{where}: {user} was not read (internal: call local_paths first)")
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in user.items()}
    for key in ("scheduler", "fp16"):
        if key == "fp16" and not (out.get("fp16") or {}).get("enabled"):
            continue
        if key in out:
            raise UserError(f"{where}: `{key}` is not supported: " + (
                "the schedule is training.lr_scheduler and training.warmup_steps" if key == "scheduler"
                else "fp16 needs loss scaling; use training.mixed_precision: bf16 or model.dtype: bfloat16"))
    if (out.get("bf16") or {}).get("enabled") and dtype != "bfloat16":
        raise UserError(f"{where}: bf16.enabled needs model.dtype: bfloat16 (DeepSpeed then keeps fp32 master "
                        "weights); for bf16 compute on fp32 weights use training.mixed_precision: bf16")
    opt = out.get("optimizer") or {"type": "AdamW"}
    if str(opt.get("type", "")).lower() not in ("adam", "adamw"):
        raise UserError(f"{where}: optimizer.type {opt.get('type')!r}: only Adam / AdamW are supported")
    out["optimizer"] = {"type": "AdamW", "params": dict(opt.get("params") or {})}
    d, workers = scaling.deepspeed, scaling.num_workers
    zero = out.setdefault("zero_optimization", {})
    if "zero_stage" in d.model_fields_set or "stage" not in zero:  # a typed field left unset yields to the JSON
        _set(out, "zero_optimization.stage", d.zero_stage, where)
    if d.offload_optimizer:
        _set(out, "zero_optimization.offload_optimizer.device", "cpu", where)
    if d.offload_params:
        _set(out, "zero_optimization.offload_param.device", "cpu", where)
    if "offload_param" in zero and zero["stage"] != 3:
        raise UserError(f"scaling.deepspeed: parameter offload needs ZeRO stage 3 (it is {zero['stage']}): only "
                        "ZeRO-3 shards the parameters")
    _set(out, "train_micro_batch_size_per_gpu", training.micro_batch_size, where)
    _set(out, "gradient_accumulation_steps", accumulation, where)
    _set(out, "train_batch_size", training.micro_batch_size * accumulation * workers, where)
    _set(out, "gradient_clipping", float(training.max_grad_norm or 0.0), where)
    _set(out, "optimizer.params.lr", float(training.learning_rate), where)
    _set(out, "optimizer.params.weight_decay", float(training.weight_decay), where)
    out["optimizer"]["params"].setdefault("betas", [0.9, 0.999])  # torch.optim.AdamW's defaults, as FSDP2's
    out["optimizer"]["params"].setdefault("eps", 1e-8)
    offloaded = "offload_optimizer" in out.get("zero_optimization", {})
    out["optimizer"]["params"]["torch_adam"] = not offloaded  # DeepSpeed's fused Adam needs CUDA
    if dtype == "bfloat16":
        out["bf16"] = {**(out.get("bf16") or {}), "enabled": True}
    out.setdefault("steps_per_print", 2**31 - 1)  # DeepSpeed's own progress lines: ours are the metrics
    out.setdefault("wall_clock_breakdown", False)
    return out


class DeepSpeedStrategy(Strategy):
    name = "deepspeed"

    def __init__(self, model: torch.nn.Module, config: dict, scheduler_factory: Callable, device: torch.device):
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
        # Ray Train sets LOCAL_RANK; an RL learner actor sees only its own GPU (or none), so its device index
        os.environ.setdefault("LOCAL_RANK", str(device.index or 0))
        import deepspeed

        if dist.is_initialized():  # Ray Train's or the learner group's: DeepSpeed joins it
            deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)
        model.to(device)
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=config,
            lr_scheduler=scheduler_factory, dist_init_required=False)
        super().__init__(engine, engine.module)
        self.engine, self.stage = engine, config["zero_optimization"]["stage"]
        self.attach(optimizer, scheduler)

    @contextlib.contextmanager
    def accumulate(self, last: bool):
        self.engine.set_gradient_accumulation_boundary(last)
        yield

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the loops weight each micro batch themselves

    def step(self, max_grad_norm: float | None, check: Callable[[float], None]) -> float:
        """DeepSpeed's update (reduce, clip at ``gradient_clipping``, optimizer, scheduler); ``check`` sees
        the norm DeepSpeed computed inside it, after the update."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        grad_norm = float(norm.item() if isinstance(norm, torch.Tensor) else (norm or 0.0))
        try:
            check(grad_norm)
        except NonFiniteError as exc:
            raise NonFiniteError(str(exc).split("; stopped")[0] + "; stopped after DeepSpeed's update, which computes "
                                 "the norm (the last checkpoint holds good weights; a lower "
                                 "training.learning_rate or max_grad_norm may help)") from None
        return grad_norm

    def full_model_state(self) -> dict[str, torch.Tensor]:
        import deepspeed

        params = list(self.module.parameters())
        with deepspeed.zero.GatheredParameters(params) if self.stage == 3 else contextlib.nullcontext():
            if world()[0] != 0:
                return {}
            return {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}

    def save_optimizer(self, path: Path | None) -> None:
        """DeepSpeed's checkpoint (each rank writes its shard), every rank's files gathered into
        ``path/deepspeed`` on rank 0."""
        local = Path(tempfile.mkdtemp(prefix="rayalign-ds-"))
        try:
            self.engine.save_checkpoint(str(local), tag=TAG, save_latest=False)
            files = {p.relative_to(local).as_posix(): p.read_bytes() for p in sorted(local.rglob("*")) if p.is_file()}
        finally:
            shutil.rmtree(local, ignore_errors=True)
        rank, size = world()
        gathered: list = [None] * size if rank == 0 else None
        if size > 1:
            dist.gather_object(files, gathered, dst=0)
        else:
            gathered = [files]
        if path is None:
            return
        for shard in gathered:
            for name, data in shard.items():
                (path / DEEPSPEED / name).parent.mkdir(parents=True, exist_ok=True)
                (path / DEEPSPEED / name).write_bytes(data)

    def load_optimizer(self, path: Path) -> None:
        if not (path / DEEPSPEED / TAG).is_dir():
            raise CheckpointError(f"{path}: it has no {DEEPSPEED}/ (written by scaling.strategy fsdp or ddp?); "
                                  "resume it with the strategy that wrote it")
        loaded, _ = self.engine.load_checkpoint(str(path / DEEPSPEED), tag=TAG, load_optimizer_states=True,
                                                load_lr_scheduler_states=False, load_module_strict=True)
        if loaded is None:
            raise CheckpointError(f"{path / DEEPSPEED}: DeepSpeed could not load it")
