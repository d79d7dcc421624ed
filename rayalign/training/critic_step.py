"""PPO's critic on one rank, in pure torch (``workers/critic.py`` puts it in a Ray actor): a one-label score
head (``AutoModelForSequenceClassification``) read at every position, so V(s_t) is the head's output at the
last token of state t; column t of the values is aligned with column t of the log-probs (``batch.py``).

``values``: the step's values before any update; each rank scores its share of the rows (FSDP2 needs every
rank in every forward, so shares are padded to equal micro-batch counts) and a sum over ranks assembles them.
``train_step``: the same mini-batches and epochs as the policy (``rl_step.plan``), PPO2's clipped value loss
(``algorithms/ppo.py``) averaged over completion tokens, one optimizer step per mini-batch.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from rayalign.algorithms.ppo import value_loss
from rayalign.batch import RolloutBatch
from rayalign.config import AlgorithmConfig
from rayalign.training import guards, sharding
from rayalign.training.rl_step import plan, trim


class CriticLearner:
    def __init__(self, strategy: sharding.Strategy, algorithm: AlgorithmConfig, micro_batch_size: int,
                 max_grad_norm: float | None, seed: int, device: torch.device):
        self.strategy, self.model = strategy, strategy.model
        self.algorithm, self.micro, self.max_grad_norm, self.seed, self.device = (
            algorithm, micro_batch_size, max_grad_norm, seed, device)

    def _values(self, part: RolloutBatch) -> torch.Tensor:
        """[n, L-1] the head's output at every position but the last (the head's forward, caught on its way
        to the classifier's pooling)."""
        caught: list[torch.Tensor] = []
        head = self.strategy.module.score
        handle = head.register_forward_hook(lambda module, args, out: caught.append(out))
        try:
            self.model(input_ids=part.input_ids, attention_mask=part.attention_mask, use_cache=False)
        finally:
            handle.remove()
        return caught[0][..., 0][:, :-1].float()

    @torch.no_grad()
    def values(self, batch: RolloutBatch) -> torch.Tensor:
        rank, world = sharding.world()
        out = torch.zeros_like(batch.rollout_logps)
        for micro_batches in plan(batch.input_ids.shape[0], None, self.micro, self.seed, 0, rank, world):
            for rows, real in micro_batches:
                part = trim(batch.select(rows)).to(self.device)
                values = self._values(part).cpu()
                if real:
                    out[rows, :values.shape[1]] = values
        if world > 1:
            dist.all_reduce(out)
        return out * batch.completion_mask

    def train_step(self, batch: RolloutBatch, step: int) -> dict[str, float]:
        start = time.perf_counter()
        rank, world = sharding.world()
        a = self.algorithm
        sums: dict[str, float] = {}
        updates = 0
        for _ in range(a.ppo_epochs):
            for micro_batches in plan(batch.input_ids.shape[0], a.mini_batch_size, self.micro, self.seed, step,
                                      rank, world):
                self._update(batch, micro_batches, sums, step + 1)
                updates += 1
        keys = sorted(sums)
        reduced = sharding.all_reduce_sum([sums[k] for k in keys], self.device)
        out = {f"critic/{k}" if k == "grad_norm" else k: v / updates for k, v in zip(keys, reduced)}
        out["critic/grad_norm"] /= world  # every rank reports the same global norm
        return {**out, "critic/lr": self.strategy.lr(), "critic_step_s": time.perf_counter() - start}

    def _update(self, batch: RolloutBatch, micro_batches, sums: dict, step: int) -> None:
        world = sharding.world()[1]
        local = sum(float(batch.completion_mask[rows].sum()) for rows, real in micro_batches if real)
        total = sharding.all_reduce_sum([local], self.device)[0]
        for i, (rows, real) in enumerate(micro_batches):
            part = trim(batch.select(rows)).to(self.device)
            with self.strategy.accumulate(last=i == len(micro_batches) - 1):
                values = self._values(part)
                loss, metrics = value_loss(values, part.old_values, part.returns, part.completion_mask,
                                           self.algorithm.value_clip)
                weight = float(part.completion_mask.sum()) / max(total, 1e-9) if real else 0.0
                self.strategy.backward(loss * weight * world)
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value * weight
        grad_norm = self.strategy.step(self.max_grad_norm, lambda norm: guards.check_step(step, grad_norm=norm))
        sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm
