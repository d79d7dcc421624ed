"""GRPO-family policy losses, one pure function per variant (tensors in; loss and metrics out).

Shapes: ``logp``, ``old_logp``, ``ref_logp`` [N, T] per-token log-probs of the sampled completion tokens
under the current policy, the policy that sampled them, and the reference; ``mask`` [N, T] 1 on
completion tokens; ``advantages`` [N], one per completion (see ``advantages.py``).

The functions take every hyperparameter explicitly (clip range, KL weight, aggregation): each algorithm's
published values live in one table, ``rayalign.config.ALGORITHM_DEFAULTS``, resolved into the config.

- grpo          PPO's clipped surrogate per token, ratio = pi / pi_old, clipped to [1 - clip_low,
                1 + clip_high], plus ``kl_coef`` x KL(pi || pi_ref) per token (DeepSeekMath); reduced by
                ``loss_agg`` (the paper's is seq-mean-token-mean: 1/G sum_i 1/|o_i| sum_t).
- dr_grpo       the same surrogate, summed over tokens and divided by a constant (``max_new_tokens`` x N)
                instead of each completion's length: Dr. GRPO's fix for the length bias.
- dapo          clip-higher (clip_high > clip_low, 0.28 in the paper) and token-mean aggregation, no KL.
- gspo          GSPO (Zheng et al. 2025): one ratio per sequence, the geometric mean of the token ratios,
                s = exp(mean_t (log pi - log pi_old)), clipped per sequence to [1 - clip_low, 1 + clip_high]
                (3e-4 / 4e-4 in the paper); mean over sequences.
- rloo, reinforce_pp  the clipped surrogate of ``grpo`` with their own advantages and aggregation.
Truncated importance sampling (TIS, Yao et al. 2025, "Your efficient RL framework secretly brings you
off-policy RL training"): samples come from the rollout engine's policy, which is not the learner's when
the engine runs older weights (``async_steps``) or computes differently; each token's policy-gradient
term is weighted by min(pi_learner / pi_rollout, cap) (no gradient through the weight). Weighting the
advantage is the same thing: the clipped surrogate is linear in A for a positive weight.
KL estimators (Schulman, "Approximating KL divergence"), with log r = log pi_ref - log pi:
k1 = -log r, k2 = (log r)^2 / 2, k3 = r - 1 - log r (unbiased and always >= 0).
"""

from __future__ import annotations

import torch

Metrics = dict[str, float]


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi. [N, T]."""
    log_r = ref_logp - logp
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r ** 2
    if estimator == "k3":
        return torch.exp(log_r) - 1 - log_r
    raise ValueError(f"algorithm.kl_estimator must be k1, k2 or k3, got '{estimator}'")


def aggregate(token_loss: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Reduce [N, T] token losses: token-mean | seq-mean-token-sum | seq-mean-token-mean."""
    mask = mask.to(token_loss.dtype)
    if mode == "token-mean":
        return (token_loss * mask).sum() / mask.sum().clamp(min=1)
    per_seq = (token_loss * mask).sum(dim=1)
    if mode == "seq-mean-token-sum":
        return per_seq.mean()
    if mode == "seq-mean-token-mean":
        return (per_seq / mask.sum(dim=1).clamp(min=1)).mean()
    raise ValueError(f"algorithm.loss_agg must be token-mean, seq-mean-token-sum or seq-mean-token-mean, got '{mode}'")


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    mask = mask.to(x.dtype)
    return ((x * mask).sum() / mask.sum().clamp(min=1)).item()


def clipped_surrogate(logp, old_logp, advantages, mask, clip_low: float, clip_high: float):
    """PPO's per-token loss -min(ratio A, clip(ratio) A) [N, T] and its metrics."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # [N], or [N, T] weighted by TIS
    unclipped, clipped = ratio * adv, torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv
    token_loss = -torch.minimum(unclipped, clipped)
    metrics = {"clip_fraction": _masked_mean((clipped < unclipped).float(), mask),
               "ratio_mean": _masked_mean(ratio.detach(), mask),
               "approx_kl_old": _masked_mean(0.5 * log_ratio.detach() ** 2, mask)}
    return token_loss, metrics


def tis_weights(learner_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, cap: float,
                sequence: bool = False) -> tuple[torch.Tensor, Metrics]:
    """min(pi_learner / pi_rollout, cap) per token [N, T] (1 off the mask), or with ``sequence`` per
    sequence [N] from the geometric mean of the token ratios (GSPO's unit); no gradient."""
    m = mask.to(learner_logp.dtype)
    log_w = (learner_logp - rollout_logp).detach() * m
    if sequence:
        log_w = log_w.sum(dim=1) / m.sum(dim=1).clamp(min=1)
        w = torch.exp(log_w).clamp(max=cap)
        return w, {"tis_weight_mean": w.mean().item(), "tis_capped_fraction": (w >= cap).float().mean().item()}
    w = torch.exp(log_w).clamp(max=cap)
    return w, {"tis_weight_mean": _masked_mean(w, mask), "tis_capped_fraction": _masked_mean((w >= cap).float(), mask)}


def _with_kl(token_loss, logp, ref_logp, mask, kl_coef: float, estimator: str, metrics: Metrics):
    if kl_coef == 0 or ref_logp is None:
        return token_loss
    kl = kl_penalty(logp, ref_logp, estimator)
    metrics["kl"] = _masked_mean(kl.detach(), mask)
    return token_loss + kl_coef * kl


def grpo_loss(logp, old_logp, advantages, mask, *, clip_low: float, clip_high: float, loss_agg: str,
              kl_coef: float = 0.0, ref_logp=None, kl_estimator: str = "k3") -> tuple[torch.Tensor, Metrics]:
    token_loss, metrics = clipped_surrogate(logp, old_logp, advantages, mask, clip_low, clip_high)
    token_loss = _with_kl(token_loss, logp, ref_logp, mask, kl_coef, kl_estimator, metrics)
    return aggregate(token_loss, mask, loss_agg), metrics


def dr_grpo_loss(logp, old_logp, advantages, mask, *, max_len: int, clip_low: float, clip_high: float,
                 kl_coef: float = 0.0, ref_logp=None, kl_estimator: str = "k3") -> tuple[torch.Tensor, Metrics]:
    """Token losses summed, divided by the constant N x ``max_len`` (max_new_tokens)."""
    token_loss, metrics = clipped_surrogate(logp, old_logp, advantages, mask, clip_low, clip_high)
    token_loss = _with_kl(token_loss, logp, ref_logp, mask, kl_coef, kl_estimator, metrics)
    return (token_loss * mask).sum() / (mask.shape[0] * max_len), metrics


def dapo_loss(logp, old_logp, advantages, mask, *, clip_low: float,
              clip_high: float) -> tuple[torch.Tensor, Metrics]:
    token_loss, metrics = clipped_surrogate(logp, old_logp, advantages, mask, clip_low, clip_high)
    return aggregate(token_loss, mask, "token-mean"), metrics


def gspo_loss(logp, old_logp, advantages, mask, *, clip_low: float, clip_high: float,
              kl_coef: float = 0.0, ref_logp=None, kl_estimator: str = "k3") -> tuple[torch.Tensor, Metrics]:
    """Sequence-level ratio s_i = exp(mean_t log(pi / pi_old)), clipped per sequence."""
    m = mask.to(logp.dtype)
    log_s = ((logp - old_logp) * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
    s = torch.exp(log_s)
    unclipped, clipped = s * advantages, torch.clamp(s, 1 - clip_low, 1 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped).mean()
    metrics = {"clip_fraction": (clipped < unclipped).float().mean().item(), "ratio_mean": s.detach().mean().item()}
    if kl_coef and ref_logp is not None:
        kl = kl_penalty(logp, ref_logp, kl_estimator)
        metrics["kl"] = _masked_mean(kl.detach(), mask)
        loss = loss + kl_coef * aggregate(kl, mask, "seq-mean-token-mean")
    return loss, metrics
