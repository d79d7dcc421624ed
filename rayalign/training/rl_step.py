"""The learner's half of an online-RL step, in pure torch (``workers/learner.py`` puts it in a Ray actor).

Every rank of the learner group receives the whole step's :class:`RolloutBatch` and trains on its share:

1. Mini-batches: a permutation seeded by (seed, step) cuts the samples into global mini-batches of
   ``algorithm.mini_batch_size``; rank r takes every world-th sample of each, in micro batches of
   ``training.micro_batch_size``. Every rank runs the same number of micro batches (FSDP2 gathers
   parameters in each forward), padding with a zero-weight row where it has fewer samples.
2. Old log-probs (the PPO ratio's denominator) are the learner's own, before any update, from one
   no-grad pass, whatever weights sampled the batch: with one-step-off samples (``policy_version`` one step
   behind) the learner's weights are the proximal policy and ``algorithm.tis_cap`` reweights for the engine's,
   as in decoupled PPO (AReaL). A batch older than ``algorithm.async_steps`` steps is refused. With one
   mini-batch and one epoch the first forward's detached log-probs are the same numbers, so that pass is
   skipped (the ratio is then exactly 1 and only the clip metrics are trivial).
   The same numbers give ``mismatch_kl``: KL(rollout engine || learner) on the sampled tokens (k3
   estimator), ~0 when the engine runs the learner's weights in the same precision.
3. Loss: the algorithm's loss of each micro batch x (its units / the mini-batch's global units) x world
   (units: tokens for token-mean losses, sequences otherwise; FSDP / DDP average gradients over ranks),
   backward, clip, optimizer and scheduler step once per mini-batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import fields
from functools import partial
from typing import Callable

import torch

from rayalign.algorithms import policy as P
from rayalign.batch import RolloutBatch
from rayalign.config import AlgorithmConfig
from rayalign.models.logprobs import next_token_logps
from rayalign.training import guards, sharding

LossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]


def policy_loss(a: AlgorithmConfig, max_new_tokens: int) -> tuple[LossFn, str]:
    """The loss of ``algorithm.name`` with the config's (resolved, per-algorithm) hyperparameters, as
    ``fn(logp, old_logp, advantages, mask, ref_logp=...)``, and the unit its reduction averages over:
    "tokens" for token-mean, "sequences" otherwise."""
    clip = {"clip_low": a.clip_low, "clip_high": a.clip_high}
    kl = {"kl_coef": a.kl_coef, "kl_estimator": a.kl_estimator} if a.kl_coef else {}
    surrogate = partial(P.grpo_loss, **clip, **kl, loss_agg=a.loss_agg)
    table: dict[str, LossFn] = {
        "grpo": surrogate, "rloo": surrogate, "reinforce_pp": surrogate,
        "dr_grpo": partial(P.dr_grpo_loss, max_len=max_new_tokens, **clip, **kl),
        "dapo": lambda logp, old, adv, mask, ref_logp=None: P.dapo_loss(logp, old, adv, mask, **clip),
        "gspo": partial(P.gspo_loss, **clip, **kl),
        # ppo: the KL is in the per-token rewards (driver side), not the loss
        "ppo": lambda logp, old, adv, mask, ref_logp=None: P.grpo_loss(logp, old, adv, mask, **clip,
                                                                        loss_agg=a.loss_agg),
    }
    return table[a.name], "tokens" if a.loss_agg == "token-mean" else "sequences"


def trim(batch: RolloutBatch) -> RolloutBatch:
    """Drop the padding columns no row of this micro batch uses (from every per-token field)."""
    width = int(batch.attention_mask.sum(dim=1).max())
    kept = {f.name: getattr(batch, f.name) for f in fields(batch)}
    for name, value in kept.items():
        if isinstance(value, torch.Tensor) and value.dim() == 2:
            kept[name] = value[:, :width if name in ("input_ids", "attention_mask") else width - 1]
    return RolloutBatch(**kept)


def plan(n: int, mini_batch_size: int | None, micro: int, seed: int, step: int, rank: int,
         world: int) -> list[list[tuple[list[int], bool]]]:
    """Per mini-batch, this rank's micro batches as (sample indices, real?); a padded micro batch
    (real = False) reuses the mini-batch's first sample with zero weight."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + step)).tolist()
    size = mini_batch_size or n
    out = []
    for start in range(0, n, size):
        mb = order[start:start + size]
        mine = mb[rank::world]
        count = math.ceil(math.ceil(len(mb) / world) / micro)
        out.append([(mine[k * micro:(k + 1) * micro] or [mb[0]], bool(mine[k * micro:(k + 1) * micro]))
                    for k in range(count)])
    return out


def micro_batches_per_update(algorithm: AlgorithmConfig, training, world: int) -> int:
    """Micro batches each rank runs per optimizer update (``plan``'s count for a full mini-batch)."""
    rows = algorithm.mini_batch_size or algorithm.prompts_per_step * algorithm.group_size
    return math.ceil(math.ceil(rows / world) / training.micro_batch_size)


class PolicyLearner:
    """The policy being trained on one rank: its strategy (the wrapped model, optimizer, scheduler), the loss."""

    def __init__(self, strategy: sharding.Strategy, algorithm: AlgorithmConfig, max_new_tokens: int,
                 micro_batch_size: int, max_grad_norm: float | None, seed: int, device: torch.device,
                 reference: torch.nn.Module | None = None,
                 image_inputs: Callable[[RolloutBatch], dict] = lambda part: {}):
        self.strategy, self.model = strategy, strategy.model
        self.algorithm, self.micro, self.max_grad_norm = algorithm, micro_batch_size, max_grad_norm
        self.seed, self.device, self.reference = seed, device, reference
        self.image_inputs = image_inputs  # a vision-language policy: the micro batch's images as model inputs
        self.loss_fn, self.unit = policy_loss(algorithm, max_new_tokens)

    def _units(self, completion_mask: torch.Tensor) -> float:
        """What the loss averages over in these rows: completion tokens or sequences."""
        return float(completion_mask.sum()) if self.unit == "tokens" else float(completion_mask.shape[0])

    @torch.no_grad()
    def _old_logps(self, batch: RolloutBatch, micro_batches) -> tuple[torch.Tensor, dict[str, float]]:
        """The learner's log-probs of every sample this rank trains on, before any update; and the
        mismatch / entropy sums over them."""
        old = torch.zeros_like(batch.rollout_logps)
        sums = {"mismatch_kl": 0.0, "entropy": 0.0, "tokens": 0.0}
        for rows, real in micro_batches:
            part = trim(batch.select(rows)).to(self.device)
            logp, entropy = next_token_logps(self.model, part.input_ids, part.attention_mask, with_entropy=True,
                                             images=self.image_inputs(part))
            old[rows, :logp.shape[1]] = logp.cpu()
            if real:
                self._add_stats(sums, part, logp, entropy)
        return old, sums

    @staticmethod
    def _add_stats(sums: dict, part: RolloutBatch, logp: torch.Tensor, entropy: torch.Tensor) -> None:
        mask = part.completion_mask.to(logp.dtype)
        # float64: the two log-probs agree to ~1e-7, where k3 in float32 is all rounding
        mismatch = P.kl_penalty(part.rollout_logps.double(), logp.detach().double(), "k3").to(logp.dtype)
        sums["mismatch_kl"] += float((mismatch * mask).sum())
        sums["entropy"] += float((entropy * mask).sum())
        sums["tokens"] += float(mask.sum())

    def train_step(self, batch: RolloutBatch, step: int) -> dict[str, float]:
        """All of this step's optimizer updates; metrics averaged over ranks and mini-batches."""
        start = time.perf_counter()
        rank, world = sharding.world()
        a = self.algorithm
        staleness = step - batch.policy_version
        if not 0 <= staleness <= a.async_steps:
            raise ValueError(f"step {step + 1}: samples from the weights after step {batch.policy_version}, "
                             f"{staleness} step(s) stale; algorithm.async_steps allows 0 to {a.async_steps}")
        mini = plan(batch.input_ids.shape[0], a.mini_batch_size, self.micro, self.seed, step, rank, world)
        on_policy = len(mini) == 1 and a.ppo_epochs == 1
        old, stats = (None, {"mismatch_kl": 0.0, "entropy": 0.0, "tokens": 0.0}) if on_policy else \
            self._old_logps(batch, [mb for micro in mini for mb in micro])
        sums: dict[str, float] = {}
        updates = 0
        for _ in range(a.ppo_epochs):
            for micro_batches in mini:
                self._update(batch, micro_batches, old, stats if on_policy else None, sums, step + 1)
                updates += 1
        keys = sorted(sums)
        reduced = sharding.all_reduce_sum([stats["mismatch_kl"], stats["entropy"], stats["tokens"]]
                                          + [sums[k] for k in keys], self.device)
        tokens = max(reduced[2], 1.0)
        out = {"mismatch_kl": reduced[0] / tokens, "entropy": reduced[1] / tokens,
               **{k: v / updates for k, v in zip(keys, reduced[3:])}, "lr": self.strategy.lr(),
               "learner_step_s": time.perf_counter() - start, "optimizer_steps": updates,
               "staleness": float(staleness)}
        out["grad_norm"] = out["grad_norm"] / world  # every rank reports the same global norm
        return out

    def _update(self, batch: RolloutBatch, micro_batches, old, stats: dict | None, sums: dict, step: int) -> None:
        """One optimizer step over one mini-batch (this rank's micro batches); a non-finite gradient norm
        stops the run before it (``guards``)."""
        world = sharding.world()[1]
        local = sum(self._units(batch.completion_mask[rows]) for rows, real in micro_batches if real)
        total = sharding.all_reduce_sum([local], self.device)[0]
        for i, (rows, real) in enumerate(micro_batches):
            part = trim(batch.select(rows)).to(self.device)
            with self.strategy.accumulate(last=i == len(micro_batches) - 1):
                logp, entropy = next_token_logps(self.model, part.input_ids, part.attention_mask,
                                                 with_entropy=stats is not None, images=self.image_inputs(part))
                old_logp = logp.detach() if old is None else old[rows, :logp.shape[1]].to(self.device)
                ref = self._ref_logps(part)
                advantages, tis = self._importance_weighted(part, old_logp)
                loss, metrics = self.loss_fn(logp, old_logp, advantages, part.completion_mask, ref_logp=ref)
                metrics.update(tis)
                weight = self._units(part.completion_mask) / max(total, 1e-9) if real else 0.0
                self.strategy.backward(loss * weight * world)
            if stats is not None and real:
                self._add_stats(stats, part, logp, entropy)
            sums["loss"] = sums.get("loss", 0.0) + loss.item() * weight
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value * weight
        # a NaN loss or reward makes the (global) norm NaN too
        grad_norm = self.strategy.step(self.max_grad_norm, lambda norm: guards.check_step(step, grad_norm=norm))
        sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm

    def _importance_weighted(self, part: RolloutBatch, learner_logp: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The micro batch's advantages, times the TIS weights pi_learner / pi_rollout (capped at
        ``algorithm.tis_cap``; per sequence for GSPO) when TIS is on. ``learner_logp``: the policy the
        PPO ratio is taken against (before this step's updates)."""
        cap = self.algorithm.tis_cap
        if cap is None:
            return part.advantages, {}
        weights, metrics = P.tis_weights(learner_logp, part.rollout_logps.to(learner_logp.dtype),
                                         part.completion_mask, cap, sequence=self.algorithm.name == "gspo")
        if weights.dim() == 1:  # gspo: one weight per sequence
            return part.advantages * weights, metrics
        per_token = part.advantages if part.advantages.dim() == 2 else part.advantages.unsqueeze(-1)
        return per_token * weights, metrics

    def _ref_logps(self, part: RolloutBatch) -> torch.Tensor | None:
        if self.algorithm.kl_coef == 0 or self.algorithm.name == "ppo":  # ppo: the KL is in the rewards
            return None
        if part.ref_logps is not None:
            return part.ref_logps
        with torch.no_grad():  # reference.colocate: a frozen copy held by this rank
            return next_token_logps(self.reference, part.input_ids, part.attention_mask,
                                    images=self.image_inputs(part))[0]
