"""Rollout workers: Ray actors each holding one generation engine (vLLM, or the HF fallback).

The engine is chosen by ``rollout.engine``; everything else (prompts as token ids in, completions with
raw log-probs out, weight loading, the sync fingerprint) is the engine interface of ``engines/base.py``.
"""

from __future__ import annotations

import torch

from rayalign.config import ModelConfig, RolloutConfig
from rayalign.engines.base import Completion, SamplingSpec
from rayalign.engines.build import build_engine
from rayalign.workers.group import quiet_actor


class RolloutWorker:
    def __init__(self, model: ModelConfig, cfg: RolloutConfig, max_model_len: int, seed: int,
                 torch_threads: int = 1):
        quiet_actor(torch_threads)
        self.engine = build_engine(cfg.engine, model, max_model_len=max_model_len,
                                   gpu_memory_utilization=cfg.gpu_memory_utilization,
                                   kv_cache_gib=cfg.kv_cache_gib, seed=seed)

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
