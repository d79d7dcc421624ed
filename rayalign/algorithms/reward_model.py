"""The reward model's loss: pure torch, scores in, loss out.

A reward model maps (prompt, answer) to one scalar r. Trained on preference pairs with the Bradley-Terry
model (Bradley & Terry 1952; InstructGPT, Ouyang et al. 2022, eq. 1): P(chosen > rejected) = sigma(r_c - r_r),
so the loss is ``-log sigma(r_c - r_r - m)`` with an optional per-pair margin m (Llama 2, Touvron et al. 2023:
pairs rated "significantly better" must score further apart). The optional centering term
``coef * (r_c + r_r)^2`` (Eisenstein et al. 2023) keeps scores near 0, where the loss alone leaves their
offset free. Both as in TRL's ``RewardTrainer``, which is the test's reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Metrics = dict[str, float]


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                       center_coef: float | None = None) -> tuple[torch.Tensor, Metrics]:
    """Mean loss over the [B] pairs' scores, and the pairs' metrics (accuracy: the share scored the right way)."""
    diff = chosen - rejected - (margin if margin is not None else 0.0)
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).mean()
    c, r = chosen.detach(), rejected.detach()
    return loss, {"accuracy": (c > r).float().mean().item(), "rewards/chosen": c.mean().item(),
                  "rewards/rejected": r.mean().item(), "rewards/margins": (c - r).mean().item()}
