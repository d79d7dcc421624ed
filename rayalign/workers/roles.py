"""The online-RL roles as one object the driver talks to: rollout workers, the learner group, the
reference, the reward pool (with the reward models' actors) and, for PPO, the critic group. Each method is
one phase of a step, a typed call on the right actors.

Before any actor starts, the roles' resource asks are added up against the cluster and reserved as one
placement group (``placement.py``): Ray would queue an actor that does not fit and wait forever, so a
shortfall is an error naming each role and its ask. Actors are named ``rayalign:<run>:<role>-<i>``, and
every call on a role has a deadline (``cluster.call_timeout_s``).

A rollout worker whose engine dies (or whose process is killed) during generation or a weight sync is
replaced: a new actor, loaded with the learners' current weights (fingerprint-verified), and the phase is
retried. Seeds are a function of the step, so the retried generation samples what the first try would
have. At most ``rollout.max_restarts`` replacements per run; past that, :class:`RunError` names the
worker and the engine's root cause.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Callable, TypeVar

import ray
import torch

from rayalign.batch import RolloutBatch
from rayalign.checkpoint import TrainerState
from rayalign.config import JudgeConfig, RecipeConfig
from rayalign.engines.base import Completion, SamplingSpec
from rayalign.errors import RunError
from rayalign.judge.judge import Judge
from rayalign.judge.service import endpoint, release
from rayalign.training.guards import NonFiniteError
from rayalign.weight_sync import Synced, sync_weights
from rayalign.placement import Placement
from rayalign.workers.group import actor_names, answers, launch, spawn
from rayalign.workers.critic import CRITIC, CriticWorker
from rayalign.workers.learner import LearnerWorker
from rayalign.workers.reference import ReferenceWorker
from rayalign.workers.reward import RewardPool, Sample, Scored
from rayalign.workers.reward_model import RewardModels
from rayalign.workers.rollout import RolloutFailed, RolloutWorker, dispatch, stop

T = TypeVar("T")
START_TIMEOUT_S = 600.0  # a vLLM engine start on a loaded 2-core machine can take minutes


class RLRoles:
    def __init__(self, cfg: RecipeConfig, max_steps: int, max_model_len: int, restored: str | None,
                 judge: JudgeConfig | None = None, notify: Callable[[str], None] = print):
        r, t = cfg.rollout, cfg.training
        # <output_dir's name>-<4 hex>: the dashboard groups a run's actors; two runs into one output_dir
        # (a resume right after a stop) never compete for a name Ray has not yet released
        self.run, self.deadline = f"{Path(t.output_dir).name}-{secrets.token_hex(2)}", cfg.cluster.call_timeout_s
        self.placement = Placement(cfg, self.run, judge)
        self.rollout_args = (cfg.model, r, max_model_len, t.seed)
        self.max_restarts, self.rollout_restarts, self.notify = r.max_restarts, 0, notify
        rollouts_ready = self._start_rollouts(r.num_workers)  # the engines start while the learners load
        self.learned_unsynced, self.version = False, 0  # version: syncs so far (the fingerprint's probe)
        self.cfg, self.max_steps, self.learner_restarts, self.learners = cfg, max_steps, 0, []
        self.restored_state: TrainerState = self._start_learners(restored)
        self.critics, self.critic_names = [], []
        if cfg.algorithm.name == "ppo":
            self._start_critics(restored)
        self.updates = self.restored_state.step  # the learners' optimizer steps (a step's updates count once)
        self.rollouts = rollouts_ready()
        self.reference, self.reference_names = None, actor_names(self.run, "reference", 1)
        if cfg.algorithm.kl_coef > 0 and not cfg.reference.colocate:
            [self.reference] = spawn(ReferenceWorker, 1, role="reference", num_cpus=cfg.reference.num_cpus,
                                     args=(cfg.model, t.micro_batch_size), timeout_s=START_TIMEOUT_S,
                                     names=self.reference_names,
                                     placed=[self.placement.options("reference", 0)])
        self.judge_cfg = judge
        models = cfg.reward.models and RewardModels(cfg.reward.models, self.run, self.deadline.reward, START_TIMEOUT_S,
                                                    placed=lambda i: self.placement.options("reward_model", i))
        if models:
            models.restore(restored)
        self.rewards = RewardPool(cfg.reward, judge=judge and Judge(judge, endpoint(judge)), run=self.run,
                                  placed=lambda i: self.placement.options("reward", i), models=models or None)

    def _start_rollouts(self, count: int, index: int = 0) -> Callable[[], list]:
        r = self.rollout_args[1]
        return launch(RolloutWorker, count, role="rollout worker", num_cpus=r.num_cpus, num_gpus=r.num_gpus,
                     args=self.rollout_args, timeout_s=START_TIMEOUT_S,
                     names=actor_names(self.run, "rollout", count, index, self.rollout_restarts),
                     placed=[self.placement.options("rollout", i) for i in range(index, index + count)])

    def _start_learners(self, restored: str | None) -> TrainerState:
        """The learner group (FSDP2 over ``scaling.num_workers`` actors), restored from ``restored``."""
        cfg, s = self.cfg, self.cfg.scaling
        self.learner_names = actor_names(self.run, "learner", s.num_workers, restart=self.learner_restarts)
        self.learners = spawn(LearnerWorker, s.num_workers, role="learner", num_cpus=s.cpus_per_worker,
                              num_gpus=self.placement.gpus("learner"), args=(s.num_workers, s),
                              timeout_s=START_TIMEOUT_S, names=self.learner_names,
                              placed=[self.placement.options("learner", i) for i in range(s.num_workers)])
        address = ray.get(self.learners[0].rendezvous.remote())
        states = self._learners("setup", START_TIMEOUT_S,
                                [learner.setup.remote(rank, address, cfg.model, cfg.training, cfg.algorithm,
                                                      cfg.rollout.max_new_tokens, self.max_steps, restored,
                                                      cfg.reference.colocate)
                                 for rank, learner in enumerate(self.learners)])
        return states[0]

    def _start_critics(self, restored: str | None) -> None:
        """PPO's critic group, from ``restored``'s critic/ or from ``critic.init`` (None: the policy)."""
        cfg, c = self.cfg, self.cfg.critic
        source = None
        if restored is not None:
            source = str(Path(restored) / CRITIC)
            if not Path(source).is_dir():
                raise RunError(f"{restored} holds no {CRITIC}/: it was not written by a ppo run; resume it with "
                               "its own algorithm or start a new output_dir")
        self.critic_names = actor_names(self.run, "critic", c.num_workers, restart=self.learner_restarts)
        self.critics = spawn(CriticWorker, c.num_workers, role="critic", num_cpus=c.cpus_per_worker,
                             num_gpus=self.placement.gpus("critic"), args=(c.num_workers, cfg.scaling),
                             timeout_s=START_TIMEOUT_S, names=self.critic_names,
                             placed=[self.placement.options("critic", i) for i in range(c.num_workers)])
        address = ray.get(self.critics[0].rendezvous.remote())
        model = cfg.model.model_copy(update={"name_or_path": c.init or cfg.model.name_or_path, "lora": None,
                                             "tokenizer": cfg.model.tokenizer or cfg.model.name_or_path})
        training = cfg.training.model_copy(update={"learning_rate": c.learning_rate})
        answers([critic.setup.remote(rank, address, model, training, cfg.algorithm, self.max_steps, source)
                 for rank, critic in enumerate(self.critics)], self.critic_names, role="critic", phase="setup",
                timeout_s=START_TIMEOUT_S)

    def rebuild_learners(self, restored: str | None) -> TrainerState:
        """A learner or critic died: both groups (a collective is broken, and the critic must match the
        policy's step) are replaced, restored from ``restored`` (the last checkpoint; None: the initial
        model), and the engines get the policy's weights."""
        for actor in self.learners + self.critics:
            ray.kill(actor)
        self.learner_restarts += 1
        state = self._start_learners(restored)
        if self.critics:
            self._start_critics(restored)
        if self.rewards.models is not None:  # the steps after the checkpoint are taken again
            self.rewards.models.restore(restored)
        self.updates = state.step
        self.sync()
        return state

    def restarts(self) -> dict[str, int]:
        """Actors replaced so far, per role."""
        return {"rollout": self.rollout_restarts, "learner": self.learner_restarts, "reward": self.rewards.restarts}

    def _learners(self, phase: str, timeout_s: float, refs: list) -> list:
        return answers(refs, self.learner_names, role="learner", phase=phase, timeout_s=timeout_s)

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
        [self.rollouts[failed.index]] = self._start_rollouts(1, failed.index)()
        self._sync_into({failed.index: self.rollouts[failed.index]})

    def generate(self, prompts: list[list[int]], spec: SamplingSpec) -> list[list[Completion]]:
        """Contiguous chunks of prompts to the rollout workers; each chunk's seeds continue the global
        numbering (prompt j samples with seed + j * n wherever it runs)."""
        def once() -> list[list[Completion]]:
            out: list[list[Completion]] = [[] for _ in prompts]
            for start, groups in dispatch(self.rollouts, prompts, spec, -(-len(prompts) // len(self.rollouts)),
                                          timeout_s=self.deadline.generate):
                out[start:start + len(groups)] = groups
            return out

        return self._with_restarts(once)

    def score(self, samples: list[Sample]) -> list[Scored]:
        return self.rewards.score(samples)

    def reference_logps(self, batch: RolloutBatch) -> Callable[[], torch.Tensor | None]:
        """Starts the reference actor's per-token log-probs of ``batch``, which run while the driver does
        other work (the rewards); the returned call waits for them, within the phase's deadline. They are
        None when the learners hold the reference (``reference.colocate``) or there is no KL term."""
        if self.reference is None:
            return lambda: None
        ref = self.reference.logps.remote(batch)
        return lambda: answers([ref], self.reference_names, role="reference", phase="reference",
                               timeout_s=self.deadline.reference)[0]

    def values(self, batch: RolloutBatch) -> Callable[[], torch.Tensor]:
        """Starts the critic's values of ``batch`` (ppo); the returned call waits for them."""
        refs = [critic.values.remote(batch) for critic in self.critics]
        return lambda: answers(refs, self.critic_names, role="critic", phase="values",
                               timeout_s=self.deadline.values)[0]

    def train(self, batch: RolloutBatch, step: int, policy: bool = True) -> dict[str, float]:
        """One step's updates of the learners and, for ppo, of the critic beside them (``policy`` False: the
        critic's warm-up, the policy waits)."""
        ref = ray.put(batch)
        critic = [critic.train_step.remote(ref, step) for critic in self.critics]
        metrics: dict[str, float] = {}
        try:
            if policy:
                self.learned_unsynced = True  # the learners are a step ahead of the step count until the sync
                metrics = self._learners("train", self.deadline.train,
                                         [learner.train_step.remote(ref, step) for learner in self.learners])[0]
        except NonFiniteError as exc:  # a run guard's stop, wrapped by Ray: keep its one line
            raise NonFiniteError(f"learner: {getattr(exc, 'cause', exc)}") from None
        try:
            if critic:
                metrics.update(answers(critic, self.critic_names, role="critic", phase="train",
                                       timeout_s=self.deadline.train)[0])
        except NonFiniteError as exc:
            raise NonFiniteError(f"critic: {getattr(exc, 'cause', exc)}") from None
        self.updates += 1  # the roles hold this step's state (a warm-up step leaves the policy as it was)
        return metrics

    def _sync_into(self, rollouts: dict[int, object]) -> Synced:
        """The learners' current weights into ``rollouts`` (by index), verified at this sync's version."""
        return sync_weights(self.learners, rollouts, self.version, self.deadline.sync, self.learner_names,
                            self.cfg.rollout.dtype)

    def sync(self) -> Synced:
        synced = self._with_restarts(lambda: self._sync_into(dict(enumerate(self.rollouts))))
        self.learned_unsynced, self.version = False, self.version + 1
        return synced

    def save(self, directory: str, state: TrainerState, keep: int | None, run: dict,
             extra: dict[str, str] | None = None) -> None:
        """Checkpoint ``directory``; ``extra``: more files (name -> text) sealed into it with the rest, as are
        the reward models' running moments."""
        extra = {**(extra or {}), **(self.rewards.models.state() if self.rewards.models else {})} or None
        dirs = None
        if self.critics:  # staged beside the checkpoint, then moved into it before the learners seal it
            staging = str(Path(directory).with_name(f".{Path(directory).name}.{CRITIC}"))
            answers([critic.save.remote(staging, state, keep, run) for critic in self.critics], self.critic_names,
                    role="critic", phase="save", timeout_s=self.deadline.save)
            dirs = {CRITIC: staging}
        self._learners("save", self.deadline.save,
                       [learner.save.remote(directory, state, keep, run, extra, dirs) for learner in self.learners])

    def shutdown(self) -> None:
        self.rewards.shutdown()
        if self.judge_cfg is not None:
            release(self.judge_cfg)
        stop(self.rollouts)
        for actor in self.learners + self.critics + ([self.reference] if self.reference else []):
            ray.kill(actor)
        self.placement.remove()
