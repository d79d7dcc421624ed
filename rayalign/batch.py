"""Typed tensor batches passed from the data pipeline to the training step (and between roles).

B = sequences in the micro batch, L = padded length (right padding). ``labels`` hold the token ids the
loss is taken on and -100 elsewhere (prompt, padding); position t of ``labels`` is predicted from
positions < t, so the shift happens in ``models.logprobs``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


def _moved(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    return value


@dataclass
class _Batch:
    def to(self, device: torch.device | str) -> "_Batch":
        return type(self)(**{f.name: _moved(getattr(self, f.name), device) for f in fields(self)})

    def select(self, rows: list[int]) -> "_Batch":
        """The given rows (dim 0) of every tensor field, and of every per-row list."""
        index = torch.tensor(rows, dtype=torch.long)

        def pick(v):
            if isinstance(v, torch.Tensor):
                return v[index]
            return [v[i] for i in rows] if isinstance(v, list) else v
        return type(self)(**{f.name: pick(getattr(self, f.name)) for f in fields(self)})


@dataclass
class SFTBatch(_Batch):
    input_ids: torch.Tensor       # [B, L] token ids
    attention_mask: torch.Tensor  # [B, L] 1 = real token
    labels: torch.Tensor          # [B, L] target ids; -100 = no loss (prompt, padding)
    position_ids: torch.Tensor    # [B, L] restart at 0 per packed document


@dataclass
class VLSFTBatch(_Batch):
    """Vision-language SFT: image tokens in ``input_ids`` stand where the processor expanded each image."""
    input_ids: torch.Tensor       # [B, L] token ids, image tokens included
    attention_mask: torch.Tensor  # [B, L]
    labels: torch.Tensor          # [B, L] assistant tokens; -100 on the prompt, the image tokens and padding
    images: dict                  # the image processor's tensors for the batch's images in row order
    #                               (``pixel_values`` [I, C, H, W], and e.g. ``image_sizes``); empty without images


@dataclass
class PreferenceBatch(_Batch):
    """Chosen and rejected stacked: rows [0, B) are chosen, [B, 2B) rejected, one forward for both."""
    input_ids: torch.Tensor       # [2B, L] prompt + completion
    attention_mask: torch.Tensor  # [2B, L]
    labels: torch.Tensor          # [2B, L] completion ids, -100 on prompt and padding
    ref_logps: torch.Tensor       # [2B] sum log pi_ref(completion | prompt); NaN until computed


@dataclass
class RewardBatch(_Batch):
    """Preference pairs for a reward model: rows [0, B) are prompt + chosen, rows [B, 2B) prompt + rejected."""
    input_ids: torch.Tensor       # [2B, L] right-padded
    attention_mask: torch.Tensor  # [2B, L]
    margin: torch.Tensor          # [B] how far chosen must score above rejected (0 without a ``margin`` field)


@dataclass
class KTOBatch(_Batch):
    """Rows [0, B) are (prompt, completion) pairs; rows [B, 2B) the mismatched KL pairs."""
    input_ids: torch.Tensor       # [2B, L]
    attention_mask: torch.Tensor  # [2B, L]
    labels: torch.Tensor          # [2B, L]
    ref_logps: torch.Tensor       # [2B] reference log-probs of both halves
    desirable: torch.Tensor       # [B] bool label of each completion


@dataclass
class RolloutBatch(_Batch):
    """One RL step's samples (N = prompts x group_size), from the driver to the reference and learner.

    Per-token fields are aligned with ``models.logprobs.token_logps``: column t scores token t + 1 of
    ``input_ids``, and ``completion_mask`` marks the sampled completion tokens.
    """
    input_ids: torch.Tensor        # [N, L] prompt + completion, right-padded
    attention_mask: torch.Tensor   # [N, L] 1 = real token
    completion_mask: torch.Tensor  # [N, L-1] 1 where column t scores a sampled completion token
    rollout_logps: torch.Tensor    # [N, L-1] log pi_rollout(token) as the engine sampled it; 0 elsewhere
    advantages: torch.Tensor       # [N] one per completion, broadcast over its tokens; ppo: [N, L-1] per token
    ref_logps: torch.Tensor | None = None  # [N, L-1] log pi_ref(token); None when kl_coef = 0
    policy_version: int = 0        # the weights that sampled it: the learners' after this many steps
    old_values: torch.Tensor | None = None  # ppo: [N, L-1] the critic's values before this step's update
    returns: torch.Tensor | None = None     # ppo: [N, L-1] GAE returns, the critic's targets
    images: list | None = None              # vision-language prompts: per row, the prompt's images (PIL), whose
    #                                         tokens ``input_ids`` hold; every forward runs them through the processor
