"""Per-token and per-sequence log-probabilities of label tokens under a causal LM."""

from __future__ import annotations

import torch

IGNORE = -100


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(labels[t] | < t) for every position, and the mask of positions that count.

    logits: [B, L, V] (position t predicts token t + 1); labels: [B, L] with -100 where ignored.
    Returns ([B, L-1] log-probs, zero where masked; [B, L-1] bool mask).
    """
    target = labels[:, 1:]
    mask = target != IGNORE
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def sequence_logps(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed label-token log-probs per sequence [B] and the label-token counts [B]."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logp, mask = token_logps(logits, labels)
    return logp.sum(-1), mask.sum(-1)


def next_token_logps(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     with_entropy: bool = False, images: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(input_ids[t + 1] | <= t) for every column t [B, L-1] (RL: masked to the completion by the
    caller) and, when asked, the policy's entropy at each column [B, L-1] (no gradient). ``images``: a
    vision-language model's image inputs for the rows' image tokens (``pixel_values``, ...)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                   **(images or {})).logits[:, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logp.exp() * logp).sum(-1)
    return picked, entropy
