"""One GRPO step as the driver runs it, on the roles of ``workers/roles.py``: generate (``sampling``: the
step's seeds), then ``learn`` (rewards, advantages, reference, the learners' update), then sync. ``rl_step``
does them in turn; ``async_step`` takes samples generated during the previous step (``one_step_off.py``).
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from rayalign.algorithms.advantages import ADVANTAGES, informative_groups, overlong_penalty
from rayalign.algorithms.ppo import advantages_and_returns
from rayalign.config import RecipeConfig
from rayalign.data.collate import collate_rollout
from rayalign.engines.base import Completion, ImagePrompt, SamplingSpec
from rayalign.metrics import PhaseTimer
from rayalign.recipes.one_step_off import OneStepOff
from rayalign.rewards.builtin import boxed_answer
from rayalign.training.guards import RewardFailures
from rayalign.workers.reward import Sample
from rayalign.workers.roles import RLRoles


def _reward_stats(rewards: torch.Tensor, scored, samples: list[Sample], groups) -> dict[str, float]:
    completions = [c for g in groups for c in g]
    out = {"reward_mean": rewards.mean().item(), "reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
           "reward_failures": float(sum(s.failed for s in scored)),
           "response_length": sum(len(c.token_ids) for c in completions) / len(completions),
           "truncated_fraction": sum(c.finish_reason == "length" for c in completions) / len(completions)}
    for name in scored[0].parts:
        out[f"reward/{name}"] = sum(s.parts.get(name, 0.0) for s in scored) / len(scored)
    if all("answer" in s.metadata for s in samples):  # the task has a verifiable answer
        out["accuracy"] = sum(boxed_answer(s.prompt, s.completion, **s.metadata) for s in samples) / len(samples)
    return out


def engine_prompt(row: dict):
    """A prepared prompt row as the engines take it: its ids, with its images when it has some."""
    return ImagePrompt(row["ids"], row["images"], row["template_ids"]) if row.get("images") else row["ids"]


def sampling(cfg: RecipeConfig, step: int) -> SamplingSpec:
    """Step ``step``'s sampling: its seeds are a function of the step, wherever and whenever it runs."""
    a, r = cfg.algorithm, cfg.rollout
    return SamplingSpec(n=a.group_size, temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens,
                        seed=cfg.training.seed * 1_000_003 + step * a.prompts_per_step * a.group_size)


def rl_step(roles: RLRoles, cfg: RecipeConfig, rows: list[dict], step: int, pad_id: int,
            failures: RewardFailures) -> dict[str, float]:
    """One synchronous RL step over ``rows`` (this step's prompts): generate, learn, sync; returns its
    metrics. Reward failures are printed and counted, and stop the run when most samples keep failing
    (``failures``)."""
    timer = PhaseTimer()
    with timer("generate"):
        groups = roles.generate([engine_prompt(row) for row in rows], sampling(cfg, step))
    metrics = learn(roles, cfg, rows, groups, step, step, pad_id, failures, timer)
    if metrics["groups_kept"]:
        with timer("sync"):
            metrics.update(roles.sync().seconds)
    metrics.update(timer.seconds)
    metrics["step_time_s"] = sum(timer.seconds.values())
    metrics["rollout_restarts"] = float(roles.rollout_restarts)  # so far in this run
    return metrics


def async_step(roles: RLRoles, schedule: OneStepOff, cfg: RecipeConfig, rows: list[dict], step: int,
               launch_next: bool, pad_id: int, failures: RewardFailures) -> dict[str, float]:
    """One one-step-off step (``one_step_off.py``): this step's samples (generated during the last step),
    sync, the next step's generation launched, then learning beside it. ``step_time_s`` is wall time:
    the phases overlap."""
    start, timer = time.perf_counter(), PhaseTimer()
    generated, waited, synced = schedule.take(step, launch_next)
    metrics = learn(roles, cfg, rows, generated.groups, generated.version, step, pad_id, failures, timer)
    metrics.update(timer.seconds)
    metrics.update({"time_generate_s": generated.seconds, "time_generate_wait_s": waited,
                    "rollout_restarts": float(roles.rollout_restarts)})
    if synced is not None:
        metrics.update({"time_sync_s": sum(synced.seconds.values()), **synced.seconds})
    metrics["step_time_s"] = time.perf_counter() - start
    return metrics


def learn(roles: RLRoles, cfg: RecipeConfig, rows: list[dict], groups: list[list[Completion]], version: int,
          step: int, pad_id: int, failures: RewardFailures, timer: PhaseTimer) -> dict[str, float]:
    """Rewards, advantages, reference and the learners' update on ``groups`` (``rows``' completions, sampled
    by the weights after step ``version``). The reference scores the batch while the rewards are computed
    (``time_reference_s`` is the wait left after them); the learners get it with only the kept groups."""
    a, r = cfg.algorithm, cfg.rollout
    samples = [Sample(row["prompt"], c.text, row["metadata"]) for row, g in zip(rows, groups) for c in g]
    batch = collate_rollout([(row["ids"], c.token_ids, c.logprobs) for row, g in zip(rows, groups) for c in g],
                            torch.zeros(len(samples)), pad_id, version)  # advantages once the rewards are in
    if any(row.get("images") for row in rows):  # the learners and the reference see the prompts' images too
        batch.images = [row.get("images", ()) for row, g in zip(rows, groups) for _ in g]
    reference = roles.reference_logps(batch)
    values = roles.values(batch) if a.name == "ppo" else None  # the critic scores beside the rewards too
    with timer("reward"):
        scored = roles.score(samples)
    failed, lines = failures.observe(step + 1, scored)
    for line in lines:
        tqdm.write(line)
    rewards = torch.tensor([s.reward for s in scored], dtype=torch.float32).view(len(rows), a.group_size)
    metrics = {**_reward_stats(rewards, scored, samples, groups), **failed}
    if a.overlong_buffer:
        lengths = torch.tensor([[len(c.token_ids) for c in g] for g in groups])
        rewards = rewards + overlong_penalty(lengths, r.max_new_tokens, a.overlong_buffer)
    keep = informative_groups(rewards) if a.dynamic_sampling else torch.ones(len(rows), dtype=torch.bool)
    metrics["groups_kept"] = float(keep.sum())
    with timer("reference"):
        batch.ref_logps = reference()
    if values is None:
        batch.advantages = ADVANTAGES[a.name](rewards).flatten().float()
    else:  # ppo: the KL folded into per-token rewards, GAE against the critic's values
        with timer("values"):
            batch.old_values = values()
        batch.advantages, batch.returns, ppo_metrics = advantages_and_returns(
            rewards.flatten(), batch.rollout_logps, batch.ref_logps, batch.old_values, batch.completion_mask,
            kl_coef=a.kl_coef, kl_estimator=a.kl_estimator, gamma=a.gamma, lam=a.lam,
            whiten_advantages=a.whiten_advantages)
        metrics.update(ppo_metrics)
    if keep.any():
        if not keep.all():
            batch = batch.select([i for i in range(len(samples)) if keep[i // a.group_size]])
        with timer("learner"):
            metrics.update(roles.train(batch, step, policy=step >= cfg.critic.warmup_steps))
    return metrics
