"""Rollout workers: Ray actors each holding one generation engine (vLLM, or the HF fallback), for RL
rollouts and for batch inference (``rayalign infer --input``).

The engine is chosen by ``rollout.engine``; everything else (prompts as token ids in, completions with
raw log-probs out, weight loading, the sync fingerprint) is the engine interface of ``engines/base.py``.
``dispatch`` spreads prompts over the workers in chunks, with seeds numbered globally. A worker's
failure comes out as :class:`RolloutFailed`, naming the worker and the root cause in one line (an engine
that died, or an actor whose process did); RL restarts such a worker (``workers/roles.py``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterator

import ray

import torch

from rayalign.config import ModelConfig, RolloutConfig
from rayalign.engines.base import Completion, EngineDied, SamplingSpec
from rayalign.engines.build import build_engine
from rayalign.engines.flat_weights import FlatWeights
from rayalign.workers.group import RoleTimeout, quiet_actor


class RolloutWorker:
    def __init__(self, model: ModelConfig, cfg: RolloutConfig, max_model_len: int, seed: int,
                 torch_threads: int = 1):
        quiet_actor(cfg.threads or torch_threads)
        if cfg.dtype is not None:
            model = model.model_copy(update={"dtype": cfg.dtype})
        self.engine = build_engine(cfg.engine, model, max_model_len=max_model_len,
                                   gpu_memory_utilization=cfg.gpu_memory_utilization,
                                   kv_cache_gib=cfg.kv_cache_gib, seed=seed, use_gpu=cfg.num_gpus > 0,
                                   threads=cfg.threads)

    def ready(self) -> bool:
        return True

    def generate(self, prompts: list[list[int]], spec: SamplingSpec) -> list[list[Completion]]:
        return self.engine.generate(prompts, spec)

    def load_weights(self, weights: FlatWeights | list[tuple[str, torch.Tensor]],
                     version: int = 0) -> tuple[tuple[float, float], dict[str, float]]:
        """Load, then return the fingerprint of what the engine now runs at sync ``version`` (checked by
        the caller) and the seconds each took."""
        start = time.perf_counter()
        self.engine.load_weights(weights)
        loaded = time.perf_counter()
        fingerprint = self.engine.fingerprint(version)
        return fingerprint, {"load_s": loaded - start, "engine_check_s": time.perf_counter() - loaded}

    def fingerprint(self, version: int = 0) -> tuple[float, float]:
        return self.engine.fingerprint(version)

    def close(self) -> None:
        """Free the engine (and stop any process of its own) before the actor is killed."""
        self.engine.close()


class RolloutFailed(RuntimeError):
    """Worker ``index`` of a rollout group failed. ``engine_died``: its engine or its actor's process is
    gone (a restart can help); otherwise the call itself raised (a bug: the message keeps its traceback)."""

    def __init__(self, role: str, index: int, error: Exception):
        self.index = index
        cause = error.cause if isinstance(error, ray.exceptions.RayTaskError) else error  # the remote exception
        self.engine_died = isinstance(cause, (EngineDied, ray.exceptions.RayActorError))
        if isinstance(cause, ray.exceptions.RayActorError):
            why = "its Ray actor died (the process was killed or crashed)"
        else:  # EngineDied is one line; anything else keeps the remote traceback Ray formatted
            why = str(cause if isinstance(cause, EngineDied) else error)
        super().__init__(f"{role} {index}: {why}")


def result(role: str, index: int, ref: Any) -> Any:
    """``ray.get`` of a call on worker ``index``, its failure as :class:`RolloutFailed`."""
    try:
        return ray.get(ref)
    except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
        raise RolloutFailed(role, index, exc) from None


def stop(workers: list[Any], timeout_s: float = 60.0) -> None:
    """Free the engines (and any process of their own), then stop the actors; a worker already dead or
    whose engine died is killed all the same."""
    refs = [w.close.remote() for w in workers]
    ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for w in workers:
        ray.kill(w)


def dispatch(workers: list[Any], prompts: list[list[int]], spec: SamplingSpec, chunk_size: int,
             role: str = "rollout worker",
             timeout_s: float | None = None) -> Iterator[tuple[int, list[list[Completion]]]]:
    """Chunks of ``chunk_size`` prompts, one in flight per worker, the next to whichever finishes first;
    yields (index of the chunk's first prompt, its completions) as chunks finish. Prompt j samples with
    seed + j * n wherever it runs, so the samples do not depend on the number of workers. No chunk
    finishing within ``timeout_s`` is a :class:`RoleTimeout` naming the workers still generating."""
    starts = list(range(0, len(prompts), chunk_size))[::-1]
    running: dict[Any, tuple[int, Any]] = {}

    def submit(worker: Any) -> None:
        start = starts.pop()
        seed = None if spec.seed is None else spec.seed + start * spec.n
        ref = worker.generate.remote(prompts[start:start + chunk_size], dataclasses.replace(spec, seed=seed))
        running[ref] = (start, worker)

    for worker in workers[:len(starts)]:
        submit(worker)
    while running:
        done, _ = ray.wait(list(running), num_returns=1, timeout=timeout_s)
        if not done:
            late = ", ".join(f"{role} {workers.index(w)}" for _, w in running.values())
            raise RoleTimeout(f"{late}: generate did not answer within {timeout_s:g} s (cluster.call_timeout_s."
                              "generate); the actor is hung or its node is gone", "rollout")
        [ref] = done
        start, worker = running.pop(ref)
        if starts:
            submit(worker)
        yield start, result(role, workers.index(worker), ref)
