"""DPO-family losses, one pure function per variant (no Ray, no model: tensors in, loss out).

Inputs are per-sequence log-probabilities of the completion tokens (prompt tokens excluded):
``*_logps`` summed over tokens, ``*_len`` the completion token counts. Each function returns the
mean loss over the batch and a metrics dict of detached scalars. The implicit reward of a completion
is ``beta * (log pi(y|x) - log pi_ref(y|x))``.

Formulas (papers; the reference-based ones take the log-ratio margin
``delta = (pc - rc) - (pr - rr)``):
- sigmoid  DPO (Rafailov et al. 2023): ``-log sigma(beta * delta)``; with ``label_smoothing`` eps it
           is cDPO: ``-(1-eps) log sigma(beta delta) - eps log sigma(-beta delta)``
- ipo      IPO (Azar et al. 2023, eq. 17): ``(delta_avg - 1/(2 beta))^2`` with the log-ratios averaged
           per completion token, as the IPO authors' results use (and TRL does)
- hinge    SLiC (Zhao et al. 2023): ``relu(1 - beta * delta)``
- robust   rDPO (Chowdhury et al. 2024): unbiased under label-flip rate eps:
           ``((1-eps) l(delta) - eps l(-delta)) / (1 - 2 eps)``, ``l = -log sigma(beta .)``
- simpo    SimPO (Meng et al. 2024), reference-free: ``-log sigma(beta (avg_c - avg_r) - gamma)``
- orpo     ORPO (Hong et al. 2024), reference-free: ``NLL(chosen) - beta * log sigma(log odds ratio)``
           with odds from per-token average log-probs
- kto      KTO (Ethayarajh et al. 2024), unpaired: desirable ``1 - sigma(beta (r - z))``, undesirable
           ``1 - sigma(beta (z - r))``, ``z`` the batch KL estimate (clamped at 0, no gradient)
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Metrics = dict[str, float]


def _pair_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> Metrics:
    c, r = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": c.mean().item(),
        "rewards/rejected": r.mean().item(),
        "rewards/margins": (c - r).mean().item(),
        "rewards/accuracies": (c > r).float().mean().item(),
    }


def _smoothed_nll(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Binary cross-entropy of margin ``z`` with label noise ``eps`` (plain -log sigma(z) at eps 0)."""
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def _ratios(pc, pr, rc, rr, beta):
    """Implicit rewards of chosen and rejected, each [B]."""
    return beta * (pc - rc), beta * (pr - rr)


def sigmoid_loss(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor,
                 beta: float, label_smoothing: float = 0.0) -> tuple[torch.Tensor, Metrics]:
    """DPO / cDPO. pc, pr: [B] policy log p(chosen), log p(rejected); rc, rr: [B] the reference's."""
    chosen_r, rejected_r = _ratios(pc, pr, rc, rr, beta)
    loss = _smoothed_nll(chosen_r - rejected_r, label_smoothing)
    return loss.mean(), _pair_metrics(chosen_r, rejected_r)


def ipo_loss(pc, pr, rc, rr, beta: float, chosen_len: torch.Tensor,
             rejected_len: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    """IPO with per-token-averaged log-ratios. *_len: [B] completion token counts."""
    delta = (pc - rc) / chosen_len.clamp(min=1) - (pr - rr) / rejected_len.clamp(min=1)
    loss = (delta - 1 / (2 * beta)) ** 2
    return loss.mean(), _pair_metrics(*_ratios(pc, pr, rc, rr, beta))


def hinge_loss(pc, pr, rc, rr, beta: float) -> tuple[torch.Tensor, Metrics]:
    chosen_r, rejected_r = _ratios(pc, pr, rc, rr, beta)
    return torch.relu(1 - (chosen_r - rejected_r)).mean(), _pair_metrics(chosen_r, rejected_r)


def robust_loss(pc, pr, rc, rr, beta: float, label_smoothing: float) -> tuple[torch.Tensor, Metrics]:
    chosen_r, rejected_r = _ratios(pc, pr, rc, rr, beta)
    z = chosen_r - rejected_r
    eps = label_smoothing
    loss = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return loss.mean(), _pair_metrics(chosen_r, rejected_r)


def simpo_loss(pc, pr, chosen_len: torch.Tensor, rejected_len: torch.Tensor, beta: float,
               gamma: float, label_smoothing: float = 0.0) -> tuple[torch.Tensor, Metrics]:
    """SimPO: reference-free, length-normalised; gamma is the target reward margin."""
    chosen_r = beta * pc / chosen_len.clamp(min=1)
    rejected_r = beta * pr / rejected_len.clamp(min=1)
    loss = _smoothed_nll(chosen_r - rejected_r - gamma, label_smoothing)
    return loss.mean(), _pair_metrics(chosen_r, rejected_r)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable near 0 (where a confident model's mean log-prob sits)."""
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(pc, pr, chosen_len: torch.Tensor, rejected_len: torch.Tensor, chosen_nll: torch.Tensor,
              beta: float) -> tuple[torch.Tensor, Metrics]:
    """ORPO: SFT NLL on chosen plus beta x the odds-ratio term. chosen_nll: scalar mean token NLL."""
    avg_c, avg_r = pc / chosen_len.clamp(min=1), pr / rejected_len.clamp(min=1)
    log_odds = (avg_c - avg_r) - (_log1mexp(avg_c) - _log1mexp(avg_r))
    ratio = F.logsigmoid(log_odds)
    loss = chosen_nll - beta * ratio.mean()
    metrics = _pair_metrics(beta * avg_c, beta * avg_r)
    metrics.update({"nll_loss": float(chosen_nll.detach()), "log_odds_ratio": ratio.detach().mean().item()})
    return loss, metrics


def kto_kl(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor,
           reduce: Callable[[torch.Tensor], torch.Tensor] = lambda z: z) -> torch.Tensor:
    """KTO's reference point z: mean log-ratio on mismatched (prompt, completion) pairs, >= 0, no grad.
    ``reduce`` averages the mean over data-parallel workers before the clamp (as TRL gathers it)."""
    return reduce((policy_kl_logps - ref_kl_logps).detach().mean()).clamp(min=0)


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor,
             beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> tuple[torch.Tensor, Metrics]:
    """KTO. policy_logps, ref_logps: [B]; desirable: [B] bool labels; kl: scalar from ``kto_kl``."""
    rewards = beta * (policy_logps - ref_logps)
    good, bad = rewards[desirable], rewards[~desirable]
    losses = torch.cat([
        desirable_weight * (1 - torch.sigmoid(good - beta * kl)),
        undesirable_weight * (1 - torch.sigmoid(beta * kl - bad)),
    ])
    metrics = {"kl": float(kl), "rewards/chosen": good.detach().mean().item() if len(good) else 0.0,
               "rewards/rejected": bad.detach().mean().item() if len(bad) else 0.0}
    return losses.mean(), metrics


# loss_type -> how the config's knobs feed each function. Inputs: per-sequence sums pc, pr (policy) and
# rc, rr (reference) [B], completion lengths lc, lr [B], and ORPO's mean chosen-token NLL (scalar).
_PAIR_LOSSES = {
    "sigmoid": lambda c, pc, pr, rc, rr, lc, lr, nll: sigmoid_loss(pc, pr, rc, rr, c.beta, c.label_smoothing),
    "ipo": lambda c, pc, pr, rc, rr, lc, lr, nll: ipo_loss(pc, pr, rc, rr, c.beta, lc, lr),
    "hinge": lambda c, pc, pr, rc, rr, lc, lr, nll: hinge_loss(pc, pr, rc, rr, c.beta),
    "robust": lambda c, pc, pr, rc, rr, lc, lr, nll: robust_loss(pc, pr, rc, rr, c.beta, c.label_smoothing),
    "simpo": lambda c, pc, pr, rc, rr, lc, lr, nll: simpo_loss(pc, pr, lc, lr, c.beta, c.simpo_gamma,
                                                               c.label_smoothing),
    "orpo": lambda c, pc, pr, rc, rr, lc, lr, nll: orpo_loss(pc, pr, lc, lr, nll, c.beta),
}
REFERENCE_FREE = ("simpo", "orpo")


def pair_loss(cfg, pc, pr, rc, rr, lc, lr, chosen_nll) -> tuple[torch.Tensor, Metrics]:
    """The paired DPO-family loss named by ``cfg.loss_type`` (a ``PreferenceConfig``)."""
    if cfg.loss_type not in _PAIR_LOSSES:
        raise ValueError(f"preference.loss_type '{cfg.loss_type}' is not a paired loss")
    return _PAIR_LOSSES[cfg.loss_type](cfg, pc, pr, rc, rr, lc, lr, chosen_nll)
