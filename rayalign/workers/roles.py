"""The online-RL roles as one object the driver talks to: rollout workers, the learner group, the
reference, the reward pool. Each method is one phase of a step, a typed call on the right actors.

Before any actor starts, the roles' resource asks are added up against the cluster: Ray would queue an
actor that does not fit and wait forever, so a shortfall is an error naming each role and its ask.

A rollout worker whose engine dies (or whose process is killed) during generation or a weight sync is
replaced: a new actor, loaded with the learners' current weights (fingerprint-verified), and the phase is
retried. Seeds are a function of the step, so the retried generation samples what the first try would
have. At most ``rollout.max_restarts`` replacements per run; past that, :class:`RunError` names the
worker and the engine's root cause.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import ray
import torch

from rayalign.batch import RolloutBatch
from rayalign.checkpoint import TrainerState
from rayalign.config import JudgeConfig, RecipeConfig
from rayalign.engines.base import Completion, SamplingSpec
from rayalign.errors import RunError, UserError
from rayalign.judge.judge import Judge
from rayalign.judge.service import endpoint, release
from rayalign.training.guards import NonFiniteError
from rayalign.weight_sync import sync_weights
from rayalign.workers.group import spawn
from rayalign.workers.learner import LearnerWorker
from rayalign.workers.reference import ReferenceWorker
from rayalign.workers.reward import RewardPool, Sample, Scored
from rayalign.workers.rollout import RolloutFailed, RolloutWorker, dispatch, stop

T = TypeVar("T")
START_TIMEOUT_S = 600.0  # a vLLM engine start on a loaded 2-core machine can take minutes


def resource_asks(cfg: RecipeConfig, judge: JudgeConfig | None = None) -> dict[str, tuple[float, float]]:
    """role -> (CPUs, GPUs) it reserves in total."""
    s, r = cfg.scaling, cfg.rollout
    asks = {"rollout": (r.num_workers * r.num_cpus, r.num_workers * r.num_gpus),
            "learner": (s.num_workers * s.cpus_per_worker, s.num_workers if s.use_gpu else 0)}
    if cfg.reward.functions:
        asks["reward"] = (cfg.reward.num_workers * cfg.reward.num_cpus, 0)
    if cfg.algorithm.kl_coef > 0 and not cfg.reference.colocate:
        asks["reference"] = (cfg.reference.num_cpus, 0)
    if judge is not None and judge.model is not None:  # a local judge: its Serve replicas
        replicas = judge.serve.start_replicas
        asks["judge"] = (replicas * judge.serve.num_cpus, replicas * judge.serve.num_gpus)
    return asks


def check_resources(cfg: RecipeConfig, judge: JudgeConfig | None = None) -> None:
    asks = resource_asks(cfg, judge)
    have = ray.cluster_resources()
    for i, kind in enumerate(("CPU", "GPU")):
        need = sum(a[i] for a in asks.values())
        if need > have.get(kind, 0) + 1e-9:
            listed = ", ".join(f"{role} {a[i]:g}" for role, a in asks.items() if a[i])
            keys = "rollout.num_cpus, scaling.cpus_per_worker, reference.num_cpus, reward.num_cpus, judge serve.num_cpus"
            raise UserError(f"the RL roles ask for {need:g} {kind} ({listed}) but the Ray cluster has "
                            f"{have.get(kind, 0):g}; lower {keys if kind == 'CPU' else 'the GPU asks'}")


class RLRoles:
    def __init__(self, cfg: RecipeConfig, max_steps: int, max_model_len: int, restored: str | None,
                 judge: JudgeConfig | None = None, notify: Callable[[str], None] = print):
        check_resources(cfg, judge)
        s, r, t = cfg.scaling, cfg.rollout, cfg.training
        self.rollout_args = (cfg.model, r, max_model_len, t.seed)
        self.rollouts = self._spawn_rollouts(r.num_workers)
        self.max_restarts, self.rollout_restarts, self.notify = r.max_restarts, 0, notify
        self.learned_unsynced = False
        self.learners = spawn(LearnerWorker, s.num_workers, role="learner", num_cpus=s.cpus_per_worker,
                              num_gpus=1 if s.use_gpu else 0, args=(s.num_workers, s), timeout_s=START_TIMEOUT_S)
        address = ray.get(self.learners[0].rendezvous.remote())
        states = ray.get([learner.setup.remote(rank, address, cfg.model, t, cfg.algorithm, r.max_new_tokens,
                                               max_steps, restored, cfg.reference.colocate)
                          for rank, learner in enumerate(self.learners)])
        self.restored_state: TrainerState = states[0]
        self.reference = None
        if cfg.algorithm.kl_coef > 0 and not cfg.reference.colocate:
            [self.reference] = spawn(ReferenceWorker, 1, role="reference", num_cpus=cfg.reference.num_cpus,
                                     args=(cfg.model, t.micro_batch_size), timeout_s=START_TIMEOUT_S)
        self.judge_cfg = judge
        self.rewards = RewardPool(cfg.reward, judge=judge and Judge(judge, endpoint(judge)))

    def _spawn_rollouts(self, count: int) -> list:
        r = self.rollout_args[1]
        return spawn(RolloutWorker, count, role="rollout worker", num_cpus=r.num_cpus, num_gpus=r.num_gpus,
                     args=self.rollout_args, timeout_s=START_TIMEOUT_S)

    def _with_restarts(self, phase: Callable[[], T]) -> T:
        """``phase()``, replacing a rollout worker that died in it and running it again."""
        failed: RolloutFailed | None = None
        while True:
            try:
                if failed is not None:
                    self._replace(failed)
                return phase()
            except RolloutFailed as exc:
                failed = exc

    def _replace(self, failed: RolloutFailed) -> None:
        if not failed.engine_died:
            raise RunError(str(failed))
        if self.rollout_restarts >= self.max_restarts:
            raise RunError(f"{failed}; stopping: {self.rollout_restarts} restart(s) already "
                           f"(rollout.max_restarts={self.max_restarts})")
        self.rollout_restarts += 1
        self.notify(f"{failed}; restarting it ({self.rollout_restarts} of at most {self.max_restarts})")
        stop([self.rollouts[failed.index]])
        [self.rollouts[failed.index]] = self._spawn_rollouts(1)
        sync_weights(self.learners, {failed.index: self.rollouts[failed.index]})

    def generate(self, prompts: list[list[int]], spec: SamplingSpec) -> list[list[Completion]]:
        """Contiguous chunks of prompts to the rollout workers; each chunk's seeds continue the global
        numbering (prompt j samples with seed + j * n wherever it runs)."""
        def once() -> list[list[Completion]]:
            out: list[list[Completion]] = [[] for _ in prompts]
            for start, groups in dispatch(self.rollouts, prompts, spec, -(-len(prompts) // len(self.rollouts))):
                out[start:start + len(groups)] = groups
            return out

        return self._with_restarts(once)

    def score(self, samples: list[Sample]) -> list[Scored]:
        return self.rewards.score(samples)

    def reference_logps(self, batch: RolloutBatch) -> torch.Tensor | None:
        """Per-token reference log-probs from the reference actor; None when the learners hold it
        (``reference.colocate``) or there is no KL term."""
        return None if self.reference is None else ray.get(self.reference.logps.remote(batch))

    def train(self, batch: RolloutBatch, step: int) -> dict[str, float]:
        ref = ray.put(batch)
        self.learned_unsynced = True  # the learners are a step ahead of the step count until the sync
        try:
            return ray.get([learner.train_step.remote(ref, step) for learner in self.learners])[0]
        except NonFiniteError as exc:  # a run guard's stop, wrapped by Ray: keep its one line
            raise NonFiniteError(f"learner: {getattr(exc, 'cause', exc)}") from None

    def sync(self) -> tuple[float, float]:
        fingerprint = self._with_restarts(lambda: sync_weights(self.learners, dict(enumerate(self.rollouts))))
        self.learned_unsynced = False
        return fingerprint

    def save(self, directory: str, state: TrainerState, keep: int | None, run: dict) -> None:
        ray.get([learner.save.remote(directory, state, keep, run) for learner in self.learners])

    def shutdown(self) -> None:
        self.rewards.shutdown()
        if self.judge_cfg is not None:
            release(self.judge_cfg)
        stop(self.rollouts)
        for actor in self.learners + ([self.reference] if self.reference else []):
            ray.kill(actor)
