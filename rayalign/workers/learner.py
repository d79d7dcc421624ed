"""Learner workers: ``scaling.num_workers`` Ray actors forming one torch.distributed group (gloo on CPU,
nccl with ``scaling.use_gpu``), the policy sharded over them with FSDP2 (``scaling.strategy``).

The driver spawns the actors, asks rank 0 for a rendezvous address, then calls ``setup`` on every actor
at once (``init_process_group`` blocks until all ranks join). After that every method is a collective
the driver calls on all ranks together: ``train_step``, ``gather_weights`` (rank 0 returns the full
weights for the rollout engines), ``save``. The math is ``training/rl_step.py``; this file is plumbing.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist

from rayalign.batch import RolloutBatch
from rayalign.checkpoint import TrainerState, prune
from rayalign.config import AlgorithmConfig, ModelConfig, ScalingConfig, TrainingConfig
from rayalign.engines.base import sync_fingerprint
from rayalign.engines.flat_weights import FlatWeights
from rayalign.data.vl_tokenize import image_inputs
from rayalign.models.loading import DTYPES, load_model, load_tokenizer
from rayalign.models.vlm import is_vlm, load_processor
from rayalign.outputs import staged
from rayalign.training.loop import build_trainable, write_checkpoint
from rayalign.training.rl_step import PolicyLearner, micro_batches_per_update
from rayalign.workers.group import quiet_actor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def fingerprinted(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The tensors of ``state`` the sync fingerprint covers: each parameter once (a tied LM head is
    the embedding). Every tensor of ``state`` is still sent: an engine re-processes a layer only when
    its own name arrives (vLLM CPU repacks a tied LM head's matmul copy only on ``lm_head.weight``)."""
    return [state[name] for name, _ in model.named_parameters()]


class LearnerWorker:
    def __init__(self, world: int, scaling: ScalingConfig):
        self.rank, self.world, self.scaling = 0, world, scaling
        self._merge_copy = None  # LoRA: the CPU peft model that merges adapters for each sync, built once
        quiet_actor(scaling.torch_threads or max(1, int(scaling.cpus_per_worker)))

    def ready(self) -> bool:
        return True

    def rendezvous(self) -> str:
        import ray

        return f"tcp://{ray.util.get_node_ip_address()}:{_free_port()}"

    def setup(self, rank: int, address: str, model: ModelConfig, training: TrainingConfig, algorithm: AlgorithmConfig,
              max_new_tokens: int, max_steps: int, restored: str | None, colocate_reference: bool) -> TrainerState:
        """Join the process group, build (or restore) the sharded policy; returns the restored state."""
        self.rank, use_gpu = rank, self.scaling.use_gpu
        if self.world > 1:
            dist.init_process_group("nccl" if use_gpu else "gloo", init_method=address, rank=self.rank,
                                    world_size=self.world)
        self.device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
        if use_gpu:
            torch.cuda.set_device(self.device)
        self.model_cfg, self.training = model, training
        # a vision-language policy: its processor turns each micro batch's images into model inputs, and is
        # saved beside the weights
        processor = load_processor(model) if is_vlm(model) else None
        self.head = "vl" if processor else "lm"
        strategy, state = build_trainable(model, training, self.scaling, max_steps, restored, self.device, self.head,
                                          accumulation=micro_batches_per_update(algorithm, training, self.world))
        reference = (load_model(model, apply_lora=False, head=self.head).to(self.device).eval().requires_grad_(False)
                     if colocate_reference and algorithm.kl_coef > 0 else None)
        images = (lambda part: image_inputs(processor, part.images, self.device)) if processor else (lambda part: {})
        self.learner = PolicyLearner(strategy, algorithm, max_new_tokens,
                                     training.micro_batch_size, training.max_grad_norm, training.seed,
                                     self.device, reference, images)
        self.tokenizer = processor or load_tokenizer(model)
        return state

    def train_step(self, batch: RolloutBatch, step: int) -> dict[str, float]:
        torch.manual_seed(self.training.seed * 1_000_003 + step * 1009 + self.rank)
        return self.learner.train_step(batch, step)

    def gather_weights(self, version: int = 0, dtype: str | None = None) -> tuple[FlatWeights | None, tuple | None]:
        """(full weights by HF name in one buffer, cast to ``dtype`` (the engines', ``rollout.dtype``) when
        given, (their sync fingerprint at ``version``, seconds each part took)) on rank 0, (None, None)
        elsewhere. A collective.

        LoRA: engines run plain models, so the adapter is merged (W + scale B A) in a CPU copy of the
        peft model, see ``_merged``."""
        start = time.perf_counter()
        state = self.learner.strategy.full_model_state()
        if self.rank != 0:
            return None, None
        if dtype is not None:
            state = {name: t.to(DTYPES[dtype]) if t.is_floating_point() else t for name, t in state.items()}
        if self.model_cfg.lora is not None:
            state, tensors = self._merged(state, dtype)
        else:
            tensors = fingerprinted(self.learner.strategy.module, state)
        gathered = time.perf_counter()
        flat = FlatWeights.pack(state.items())
        packed = time.perf_counter()
        fingerprint = sync_fingerprint(tensors, version)
        return flat, (fingerprint, {"gather_s": gathered - start, "pack_s": packed - gathered,
                                    "learner_check_s": time.perf_counter() - packed})

    def _merged(self, state: dict, dtype: str | None) -> tuple[dict, list[torch.Tensor]]:
        """LoRA: the gathered peft state loaded into a CPU copy (in ``dtype`` when given), adapters merged
        (peft's ``merge_adapter``), plain HF names read off, adapters unmerged again."""
        if self._merge_copy is None:
            from peft import get_peft_model

            peft_cfg = self.learner.strategy.module.peft_config["default"]
            base = self.model_cfg if dtype is None else self.model_cfg.model_copy(update={"dtype": dtype})
            self._merge_copy = get_peft_model(load_model(base, apply_lora=False, head=self.head), peft_cfg)
        copy = self._merge_copy
        copy.load_state_dict(state)
        copy.merge_adapter()
        base = copy.get_base_model()
        out = {name.replace(".base_layer", ""): t.detach().clone()
               for name, t in base.state_dict().items() if ".lora_" not in name}
        unique = [out[name.replace(".base_layer", "")] for name, _ in base.named_parameters() if ".lora_" not in name]
        copy.unmerge_adapter()
        return out, unique

    def save(self, directory: str, state: TrainerState, keep: int | None, run: dict,
             extra: dict[str, str] | None = None, dirs: dict[str, str] | None = None) -> None:
        """Write checkpoint ``directory`` (atomically: the sealed temp dir is staged beside it and put in
        place in one rename, ``outputs.staged``), with ``dirs`` moved into it. A collective."""
        tmp = write_checkpoint(self.model_cfg, self.learner.strategy, state, self.tokenizer, self.rank, run, extra,
                               head=self.head, dirs=dirs)
        if tmp is None:
            return
        target = Path(directory)
        with staged(target) as beside:
            shutil.move(str(tmp), beside)
        prune(target.parent.parent, keep)

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
