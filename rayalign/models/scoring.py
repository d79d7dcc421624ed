"""A reward model as a scorer: a one-label sequence classifier and its own tokenizer, scoring (prompt,
completion) pairs in batched forward passes. Each pair is tokenised as the reward model's training pairs
were (``collate.tokenize_scored``: the chat template for message prompts, EOS after plain-string
completions), so a policy with another vocabulary can be scored. Used by the RL reward-model actors
(``workers/reward_model.py``), ``rayalign evaluate``'s reward_model task and ``rayalign score``."""

from __future__ import annotations

from typing import Any

import torch

from rayalign.config import ModelConfig
from rayalign.data.collate import pad_pairs, tokenize_scored
from rayalign.models.checks import check_score_model
from rayalign.models.loading import load_model, load_tokenizer


class ScoreModel:
    def __init__(self, path: str, *, dtype: str = "float32", device: str = "cpu", max_length: int = 1024,
                 batch_size: int = 16, where: str = "reward model"):
        check_score_model(path, where)
        model = ModelConfig(name_or_path=path, dtype=dtype)
        self.device = torch.device(device)
        self.model = load_model(model, apply_lora=False, head="score").to(self.device).eval().requires_grad_(False)
        self.tokenizer, self.max_length, self.batch_size = load_tokenizer(model), max_length, batch_size

    @torch.no_grad()
    def score(self, pairs: list[tuple[Any, Any]]) -> list[float]:
        """One score per (prompt, completion); a prompt is text or a message list."""
        ids = [tokenize_scored(self.tokenizer, prompt, completion, self.max_length) for prompt, completion in pairs]
        out: list[float] = []
        for start in range(0, len(ids), self.batch_size):
            # right-padded: the head reads each row's last non-padding token
            tokens, mask, _ = pad_pairs([(x, []) for x in ids[start:start + self.batch_size]], self.tokenizer.pad_token_id)
            logits = self.model(input_ids=tokens.to(self.device), attention_mask=mask.to(self.device)).logits
            out += logits[:, 0].float().cpu().tolist()
        return out
