"""Advantages for the GRPO family, one pure function per estimator. Rewards come grouped: ``[P, G]``
(P prompts, G completions each, the GRPO group); every function returns ``[P, G]`` advantages, one per
completion, that the policy losses broadcast over its tokens.

- grpo          (r - mean_g) / (std_g + eps): DeepSeekMath's outcome supervision. std is the unbiased
                group std (as TRL and verl compute it).
- dr_grpo       r - mean_g: Dr. GRPO (Liu et al. 2025) drops the std division, which over-weights groups
                whose rewards barely differ.
- rloo          r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean_g): the leave-one-out baseline
                (Ahmadian et al. 2024), unbiased because a sample is not its own baseline.
- reinforce_pp  REINFORCE++ with the group baseline (Hu et al. 2025, OpenRLHF's ``reinforce_baseline``):
                r - mean_g, then whitened over the whole batch rather than per group.
DAPO uses ``grpo`` advantages; ``informative_groups`` is its dynamic-sampling filter and
``overlong_penalty`` its soft length punishment (Yu et al. 2025).
"""

from __future__ import annotations

import torch

EPS = 1e-6


def grpo(rewards: torch.Tensor) -> torch.Tensor:
    """rewards [P, G] -> group-normalised advantages [P, G]."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + EPS)


def dr_grpo(rewards: torch.Tensor) -> torch.Tensor:
    return rewards - rewards.mean(dim=1, keepdim=True)


def rloo(rewards: torch.Tensor) -> torch.Tensor:
    g = rewards.shape[1]
    if g < 2:
        raise ValueError("RLOO needs at least 2 completions per prompt (algorithm.group_size >= 2)")
    return (rewards - rewards.mean(dim=1, keepdim=True)) * g / (g - 1)


def reinforce_pp(rewards: torch.Tensor) -> torch.Tensor:
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return (centred - centred.mean()) / (centred.std() + EPS) if centred.numel() > 1 else centred


ADVANTAGES = {"grpo": grpo, "dr_grpo": dr_grpo, "dapo": grpo, "gspo": grpo, "rloo": rloo,
              "reinforce_pp": reinforce_pp}


def informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """DAPO dynamic sampling: [P] True where the group's rewards are not all equal (zero advantage and
    zero gradient otherwise, so such groups only dilute the batch)."""
    return (rewards.max(dim=1).values - rewards.min(dim=1).values) > 0


def overlong_penalty(lengths: torch.Tensor, max_len: int, cache_len: int) -> torch.Tensor:
    """DAPO's soft overlong punishment added to the reward: 0 up to ``max_len - cache_len`` tokens, then
    falling linearly to -1 at ``max_len``, -1 beyond."""
    start = max_len - cache_len
    lengths = lengths.float()
    ramp = (start - lengths) / cache_len
    return torch.where(lengths <= start, torch.zeros_like(lengths), torch.clamp(ramp, min=-1.0))
