"""Critic workers: PPO's value model as ``critic.num_workers`` Ray actors forming their own torch.distributed
group (FSDP2 over gloo, or nccl with ``scaling.use_gpu``), plumbing around ``training/critic_step.py``.

Set up like the learners (rendezvous, then ``setup`` on every rank at once), from ``critic.init`` (a reward
model) or the policy's weights with a fresh value head, trained with ``critic.learning_rate``. Every method
is a collective. A checkpoint's critic is the ``critic/`` directory inside it, laid out as a checkpoint of
its own: ``save`` writes it to a staging path the learners then seal into the step's checkpoint.
"""

from __future__ import annotations

import shutil

import torch
import torch.distributed as dist

from rayalign.batch import RolloutBatch
from rayalign.checkpoint import TrainerState
from rayalign.config import AlgorithmConfig, ModelConfig, TrainingConfig
from rayalign.models.loading import load_tokenizer
from rayalign.outputs import staged
from rayalign.training.critic_step import CriticLearner
from rayalign.training.rl_step import micro_batches_per_update
from rayalign.training.loop import build_trainable, write_checkpoint
from rayalign.workers.learner import LearnerWorker

CRITIC = "critic"  # the critic's directory inside a checkpoint


class CriticWorker(LearnerWorker):
    def setup(self, rank: int, address: str, model: ModelConfig, training: TrainingConfig,  # type: ignore[override]
              algorithm: AlgorithmConfig, max_steps: int, restored: str | None) -> TrainerState:
        self.rank, use_gpu = rank, self.scaling.use_gpu
        if self.world > 1:
            dist.init_process_group("nccl" if use_gpu else "gloo", init_method=address, rank=rank,
                                    world_size=self.world)
        self.device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
        self.model_cfg, self.training = model, training
        strategy, state = build_trainable(model, training, self.scaling, max_steps, restored, self.device,
                                          head="score",
                                          accumulation=micro_batches_per_update(algorithm, training, self.world))
        self.critic = CriticLearner(strategy, algorithm, training.micro_batch_size,
                                    training.max_grad_norm, training.seed, self.device)
        self.tokenizer = load_tokenizer(model)
        return state

    def values(self, batch: RolloutBatch) -> torch.Tensor:
        return self.critic.values(batch)

    def train_step(self, batch: RolloutBatch, step: int) -> dict[str, float]:
        torch.manual_seed(self.training.seed * 1_000_003 + step * 1009 + self.rank)
        return self.critic.train_step(batch, step)

    def save(self, directory: str, state: TrainerState, keep: int | None, run: dict,  # type: ignore[override]
             extra: dict[str, str] | None = None) -> None:
        """The critic as a checkpoint directory at ``directory`` (a staging path). A collective."""
        c = self.critic
        tmp = write_checkpoint(self.model_cfg, c.strategy, state, self.tokenizer, self.rank, run, head="score")
        if tmp is not None:
            with staged(directory) as beside:
                shutil.move(str(tmp), beside)
