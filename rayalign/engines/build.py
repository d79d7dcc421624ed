"""The engine a rollout worker, a Serve replica or a batch-inference worker runs, by name."""

from __future__ import annotations

import os
from typing import Literal

import torch

from rayalign.config import ModelConfig
from rayalign.engines.base import GenerationEngine


def build_engine(kind: Literal["vllm", "hf"], model: ModelConfig, *, max_model_len: int | None,
                 gpu_memory_utilization: float = 0.2, kv_cache_gib: int = 1, seed: int = 0,
                 use_gpu: bool | None = None, threads: int | None = None) -> GenerationEngine:
    """``kind`` "vllm" (CUDA vLLM, or the CPU build's KV cache of ``kv_cache_gib``) or "hf" (transformers).

    ``use_gpu``: whether the HF engine may take the GPU. A Ray actor passes whether it reserved one
    (``num_gpus > 0``): Ray 2.60 no longer hides the GPUs from zero-GPU actors (ray#54868), so "CUDA is
    there" would put every such actor on GPU 0 beside the learners. None (one process, no Ray): the GPU
    when there is one.

    ``threads`` (vLLM on CPU): OpenMP threads of the engine's worker process, unpinned. vLLM's own
    default pins a single thread to one core and keeps the other for its scheduler process, which idles
    while the model runs: on 2 cores that leaves half the machine unused during generation."""
    if kind == "vllm":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        if threads is not None:  # inherited by the engine's processes, started below
            os.environ["VLLM_CPU_OMP_THREADS_BIND"], os.environ["OMP_NUM_THREADS"] = "nobind", str(threads)
        from rayalign.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                          seed=seed)
    from rayalign.engines.hf_engine import HFEngine

    if use_gpu is None:
        use_gpu = torch.cuda.is_available()
    return HFEngine(model, device="cuda" if use_gpu else "cpu")
