"""PPO with a learned value function (Schulman et al. 2017; the RLHF form of Ouyang et al. 2022,
InstructGPT), one pure function per piece. Shapes as in ``policy.py``: [N, T] per next-token position,
``mask`` 1 on completion tokens (a contiguous span in each row; prompts and padding are 0).

- token_rewards   r_t = -kl_coef x KL_t on every completion token (KL of the sampling policy to the
                  reference, per token, ``policy.kl_penalty``), plus the sequence's score on its last token:
                  the KL penalty folded into the reward, as InstructGPT does.
- gae             delta_t = r_t + gamma V_{t+1} - V_t (V = 0 past the last token), A_t = delta_t + gamma lam
                  A_{t+1}, returns R_t = A_t + V_t (Schulman et al. 2016).
- whiten          (x - mean) / std over the masked entries of the batch (advantage whitening).
- value_loss      0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2), masked mean: PPO2's clipped
                  value loss; with explained variance 1 - Var(R - V_old) / Var(R) among its metrics.
The policy side is ``policy.clipped_surrogate`` with these per-token advantages.
"""

from __future__ import annotations

import torch

from rayalign.algorithms.policy import kl_penalty

Metrics = dict[str, float]


def last_token(mask: torch.Tensor) -> torch.Tensor:
    """[N, T] one-hot of each row's last masked position (all zero for a row without one)."""
    position = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), position, torch.full_like(position, -1)).max(dim=1).values
    return (position == last.unsqueeze(1)) & mask.bool()


def token_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor | None, mask: torch.Tensor,
                  kl_coef: float, estimator: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards [N, T], the per-token KL [N, T]): ``scores`` [N] on each last completion token, minus
    ``kl_coef`` x KL(pi || pi_ref) on every completion token (no KL term without ``ref_logp``)."""
    m = mask.to(logp.dtype)
    kl = kl_penalty(logp, ref_logp, estimator) * m if ref_logp is not None else torch.zeros_like(logp)
    rewards = -kl_coef * kl + last_token(mask).to(logp.dtype) * scores.to(logp.dtype).unsqueeze(1)
    return rewards * m, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both [N, T] and 0 off the mask."""
    m = mask.to(values.dtype)
    rewards, values = rewards * m, values * m
    advantages, running = torch.zeros_like(values), torch.zeros_like(values[:, 0])
    padded_values, padded_mask = torch.nn.functional.pad(values, (0, 1)), torch.nn.functional.pad(m, (0, 1))
    for t in reversed(range(values.shape[1])):
        follows = padded_mask[:, t + 1]  # 0 after a row's last token: the episode ends there, V = 0 beyond
        delta = rewards[:, t] + gamma * padded_values[:, t + 1] - values[:, t]
        running = delta + gamma * lam * running * follows
        advantages[:, t] = running * m[:, t]
    return advantages, (advantages + values) * m


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The unbiased variance of the masked entries."""
    m = mask.to(x.dtype)
    count = m.sum()
    centred = (x - masked_mean(x, mask)) * m
    return (centred ** 2).sum() / (count - 1).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The masked entries standardised over the batch (0 off the mask)."""
    return (x - masked_mean(x, mask)) * torch.rsqrt(masked_var(x, mask) + eps) * mask.to(x.dtype)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over the masked tokens: 1 is a perfect critic, 0 no better than a constant."""
    var = masked_var(returns, mask)
    return float(1 - masked_var(returns - values, mask) / var) if var > 0 else float("nan")


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float | None) -> tuple[torch.Tensor, Metrics]:
    """PPO2's clipped value loss (``clip`` None: the plain squared error), a masked token mean."""
    error = (values - returns) ** 2
    if clip is None:
        loss, clipped_fraction = 0.5 * masked_mean(error, mask), 0.0
    else:
        clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        clipped_error = (clipped - returns) ** 2
        loss = 0.5 * masked_mean(torch.maximum(error, clipped_error), mask)
        clipped_fraction = masked_mean((clipped_error > error).to(values.dtype), mask).item()
    return loss, {"value_loss": loss.item(), "value_clip_fraction": clipped_fraction}


def advantages_and_returns(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor | None,
                           values: torch.Tensor, mask: torch.Tensor, *, kl_coef: float, kl_estimator: str | None,
                           gamma: float, lam: float, whiten_advantages: bool) -> tuple[torch.Tensor, torch.Tensor, Metrics]:
    """One step's PPO targets from the sequences' ``scores`` [N]: (advantages, returns, metrics), the
    advantages whitened over the batch's tokens when asked; metrics as logged (means over completion tokens)."""
    rewards, kl = token_rewards(scores, logp, ref_logp, mask, kl_coef, kl_estimator or "k1")
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    metrics = {"returns": masked_mean(returns, mask).item(), "values": masked_mean(values, mask).item(),
               "advantages": masked_mean(advantages, mask).item(), "explained_variance": explained_variance(
                   values, returns, mask)}
    if ref_logp is not None:
        metrics["kl"] = masked_mean(kl, mask).item()
    return (whiten(advantages, mask) if whiten_advantages else advantages), returns, metrics
