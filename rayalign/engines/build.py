"""The engine a rollout worker, a Serve replica or a batch-inference worker runs, by name."""

from __future__ import annotations

import os
from typing import Literal

import torch

from rayalign.config import ModelConfig
from rayalign.engines.base import GenerationEngine


def build_engine(kind: Literal["vllm", "hf"], model: ModelConfig, *, max_model_len: int | None,
                 gpu_memory_utilization: float = 0.2, kv_cache_gib: int = 1, seed: int = 0) -> GenerationEngine:
    """``kind`` "vllm" (CUDA vLLM, or the CPU build's KV cache of ``kv_cache_gib``) or "hf" (transformers,
    on the GPU when there is one)."""
    if kind == "vllm":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        from rayalign.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                          seed=seed)
    from rayalign.engines.hf_engine import HFEngine

    return HFEngine(model, device="cuda" if torch.cuda.is_available() else "cpu")
