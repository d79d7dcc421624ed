"""Learner -> rollout engines: the weight transfer after every update, and its verification.

Transfer: the learner group gathers the full (unsharded) weights to rank 0 (``gather_weights``, a
collective), which puts them in Ray's object store once; every rollout worker loads them from there
by HF name (vLLM through its worker extension, see ``engines/vllm_ext.py``). On a GPU cluster the same
path works through host memory; an NCCL broadcast would skip that copy (not built).

Verification, every sync: each engine reports the fingerprint (sum, sum of squares in float64) of the
weights it now *runs*, read from its own kernels, and it must equal the learner's fingerprint of the
tensors it sent. A missed, partial or wrongly-named sync stops the run with :class:`WeightSyncError`
naming the rollout worker, instead of training on samples from stale weights (the failure the verl,
TRL and SkyRL issue trackers are full of).
"""

from __future__ import annotations

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


def sync_weights(learners: list, rollouts: dict[int, object], timeout_s: float | None = None,
                 names: list[str] | None = None) -> tuple[float, float]:
    """Send the learners' weights to the rollout workers (by index) and verify them; returns the
    fingerprint. A worker whose engine died raises ``RolloutFailed`` naming it; a learner (``names``) or
    worker that does not answer within ``timeout_s``, ``RoleTimeout``."""
    calls = [learner.gather_weights.options(num_returns=2).remote() for learner in learners]
    weights = calls[0][0]
    learner_fp, *_ = answers([c[1] for c in calls], names or [f"learner-{i}" for i in range(len(learners))],
                             role="learner", phase="sync", timeout_s=timeout_s)  # every rank's half of the gather
    loads = {i: worker.load_weights.remote(weights) for i, worker in rollouts.items()}
    _, late = ray.wait(list(loads.values()), num_returns=len(loads), timeout=timeout_s)
    if late:
        names = ", ".join(f"rollout worker {i}" for i, ref in loads.items() if ref in late)
        raise RoleTimeout(f"{names}: sync did not answer within {timeout_s:g} s (cluster.call_timeout_s.sync); "
                          "the actor is hung or its node is gone", "rollout")
    verify({i: result("rollout worker", i, ref) for i, ref in loads.items()}, learner_fp)
    return learner_fp
