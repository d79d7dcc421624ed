"""The engine a rollout worker, a Serve replica or a batch-inference worker runs, by name."""

from __future__ import annotations

import os
from typing import Literal

import torch

from rayalign.config import ModelConfig
from rayalign.engines.base import GenerationEngine


def build_engine(kind: Literal["vllm", "hf"], model: ModelConfig, *, max_model_len: int | None,
                 gpu_memory_utilization: float = 0.2, kv_cache_gib: int = 1, seed: int = 0,
                 use_gpu: bool | None = None, threads: int | None = None,
                 streaming: bool = False) -> GenerationEngine:
    """``kind`` "vllm" (CUDA vLLM, or the CPU build's KV cache of ``kv_cache_gib``) or "hf" (transformers).

    ``streaming``: an engine for many concurrent, streamed requests (a Serve replica, a chat): vLLM's
    ``AsyncLLM`` (``engines/vllm_serving.py``). Otherwise vLLM runs in this process for batches
    (``engines/vllm_engine.py``: RL rollouts, batch inference, evaluation), one per process: a second
    one opened beside it (``evaluate``'s baseline) is the serving engine. The HF engine does both.

    ``use_gpu``: whether the HF engine may take the GPU. A Ray actor passes whether it reserved one
    (``num_gpus > 0``): Ray 2.60 no longer hides the GPUs from zero-GPU actors (ray#54868), so "CUDA is
    there" would put every such actor on GPU 0 beside the learners. None (one process, no Ray): the GPU
    when there is one.

    ``threads`` (vLLM on CPU): the model's threads, unpinned (this process's torch threads; the serving
    engine's core process inherits them as ``OMP_NUM_THREADS``). vLLM's own default pins a single thread
    to one core and keeps the other for its scheduler, which idles while the model runs: on 2 cores
    that leaves half the machine unused during generation. The batch engine is never pinned: it runs in
    the caller's process, whose threads are not vLLM's to pin."""
    if kind == "vllm":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        if threads is not None or not streaming:  # inherited by the serving engine's core process
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        if threads is not None:
            os.environ["OMP_NUM_THREADS"] = str(threads)
            torch.set_num_threads(threads)
        from rayalign.engines import vllm_engine

        if streaming or vllm_engine.one_per_process_taken():
            from rayalign.engines.vllm_serving import AsyncVLLMEngine as Engine
        else:
            Engine = vllm_engine.VLLMEngine
        return Engine(model, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization, seed=seed)
    from rayalign.engines.hf_engine import HFEngine

    if use_gpu is None:
        use_gpu = torch.cuda.is_available()
    return HFEngine(model, device="cuda" if use_gpu else "cpu")
