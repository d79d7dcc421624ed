"""Learner -> rollout engines: the weight transfer after every update, and its verification.

Transfer: the learner group gathers the full (unsharded) weights to rank 0 (``gather_weights``, a
collective), which packs them into one buffer (``engines/flat_weights.py``) and puts it in Ray's
object store once; every rollout worker reads it from there without a copy and loads it by HF name
(vLLM through its worker extension and a shared-memory file, see ``engines/vllm_ext.py``). On a GPU
cluster the same path works through host memory; an NCCL broadcast would skip that copy (not built).

Verification, every sync: each engine reports the fingerprint (sum, sum of squares in float64) of the
weights it now *runs*, read from its own kernels, and it must equal the learner's fingerprint of the
tensors it sent. A sync's fingerprint covers every 1-D weight and a block of columns of every matrix,
a different block each sync (``version``; ``engines/base.probe``). A missed, partial or wrongly-named
sync stops the run with :class:`WeightSyncError` naming the rollout worker, instead of training on
samples from stale weights (the failure the verl, TRL and SkyRL issue trackers are full of).

Each part is timed (``Synced.seconds``, logged as ``sync/<part>_s``): gather and pack on the learner,
the fingerprint on each side, the engine's load, and transfer (the rest of the wall time: the object
store, Ray's calls).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray

from rayalign.engines.base import check_sync
from rayalign.workers.group import RoleTimeout, answers
from rayalign.workers.rollout import result


class WeightSyncError(RuntimeError):
    pass


def verify(engine_fps: dict[int, tuple[float, float]], learner_fp: tuple[float, float]) -> None:
    for i, fp in engine_fps.items():
        try:
            check_sync(fp, learner_fp)
        except RuntimeError as exc:
            raise WeightSyncError(f"rollout worker {i}: {exc}; the engine is not running the learner's "
                                  "weights") from None


@dataclass
class Synced:
    fingerprint: tuple[float, float]
    seconds: dict[str, float]  # sync/<part>_s, see the module's docstring


def sync_weights(learners: list, rollouts: dict[int, object], version: int, timeout_s: float | None = None,
                 names: list[str] | None = None, dtype: str | None = None) -> Synced:
    """Send the learners' weights (cast to ``dtype``, the engines' ``rollout.dtype``, when set) to the
    rollout workers (by index) and verify them at sync ``version``.
    A worker whose engine died raises ``RolloutFailed`` naming it; a learner (``names``) or worker that
    does not answer within ``timeout_s``, ``RoleTimeout``."""
    start = time.perf_counter()
    calls = [learner.gather_weights.options(num_returns=2).remote(version, dtype) for learner in learners]
    weights = calls[0][0]
    (learner_fp, learner_s), *_ = answers([c[1] for c in calls],
                                          names or [f"learner-{i}" for i in range(len(learners))],
                                          role="learner", phase="sync", timeout_s=timeout_s)  # every rank's part
    loads = {i: worker.load_weights.remote(weights, version) for i, worker in rollouts.items()}
    _, late = ray.wait(list(loads.values()), num_returns=len(loads), timeout=timeout_s)
    if late:
        names = ", ".join(f"rollout worker {i}" for i, ref in loads.items() if ref in late)
        raise RoleTimeout(f"{names}: sync did not answer within {timeout_s:g} s (cluster.call_timeout_s.sync); "
                          "the actor is hung or its node is gone", "rollout")
    loaded = {i: result("rollout worker", i, ref) for i, ref in loads.items()}
    end = time.perf_counter()
    verify({i: fp for i, (fp, _) in loaded.items()}, learner_fp)
    engine_s = {key: max(s[key] for _, s in loaded.values()) for key in ("load_s", "engine_check_s")}
    seconds = {**learner_s, **engine_s,
               "transfer_s": max(0.0, end - start - sum(learner_s.values()) - sum(engine_s.values()))}
    return Synced(learner_fp, {f"sync/{k}": v for k, v in seconds.items()})
