"""Rollout workers: Ray actors each holding one generation engine (vLLM, or the HF fallback).

The engine is chosen by ``rollout.engine``; everything else (prompts as token ids in, completions with
raw log-probs out, weight loading, the sync fingerprint) is the engine interface of ``engines/base.py``.
"""

from __future__ import annotations

import os

import torch

from rayalign.config import ModelConfig, RolloutConfig
from rayalign.engines.base import Completion, SamplingSpec
from rayalign.workers.group import quiet_actor


class RolloutWorker:
    def __init__(self, model: ModelConfig, cfg: RolloutConfig, max_model_len: int, seed: int,
                 torch_threads: int = 1):
        quiet_actor(torch_threads)
        if cfg.engine == "vllm":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
            from rayalign.engines.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(model, max_model_len=max_model_len,
                                     gpu_memory_utilization=cfg.gpu_memory_utilization, seed=seed)
        else:
            from rayalign.engines.hf_engine import HFEngine

            self.engine = HFEngine(model, device="cuda" if torch.cuda.is_available() else "cpu")

    def ready(self) -> bool:
        return True

    def generate(self, prompts: list[list[int]], spec: SamplingSpec) -> list[list[Completion]]:
        return self.engine.generate(prompts, spec)

    def load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> tuple[float, float]:
        """Load, then return the fingerprint of what the engine now runs (checked by the caller)."""
        self.engine.load_weights(weights)
        return self.engine.fingerprint()

    def fingerprint(self) -> tuple[float, float]:
        return self.engine.fingerprint()

    def close(self) -> None:
        """Stop the engine's own processes (vLLM's engine core) before the actor is killed."""
        self.engine.close()
