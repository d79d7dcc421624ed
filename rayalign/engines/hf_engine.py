"""The HF fallback engine: ``model.generate`` for models vLLM cannot load (``rollout.engine: hf``).

Sampling uses transformers' own ``generate`` (temperature, top-p, stop strings, EOS). The reported
log-probs are then recomputed with one forward pass over prompt + completion, so they are the raw model's
log-probs (before temperature / top-p), the same quantity the vLLM engine reports.
"""

from __future__ import annotations

from typing import Iterable

import torch

from rayalign.config import ModelConfig
from rayalign.data.collate import pad_pairs
from rayalign.engines.base import Completion, SamplingSpec, weights_fingerprint
from rayalign.models.loading import load_model, load_tokenizer
from rayalign.models.logprobs import token_logps


def unique_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """The module's parameters, each shared tensor once (tied embeddings)."""
    seen, out = set(), []
    for p in module.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            out.append(p)
    return out


class HFEngine:
    def __init__(self, model: ModelConfig, *, device: str = "cpu"):
        self.tokenizer = load_tokenizer(model)
        self.model = load_model(model, apply_lora=False).to(device).eval()
        self.device = torch.device(device)
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.eos.add(self.tokenizer.eos_token_id)

    def _sample(self, prompt: list[int], spec: SamplingSpec, index: int) -> list[list[int]]:
        if spec.seed is not None:
            torch.manual_seed(spec.seed + index * spec.n)
        greedy = spec.temperature == 0
        ids = torch.tensor([prompt] * (spec.n if greedy else 1), device=self.device)  # greedy: n copies
        out = self.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=spec.max_new_tokens,
            do_sample=not greedy, temperature=None if greedy else spec.temperature,
            top_p=None if greedy else spec.top_p, top_k=None, num_return_sequences=1 if greedy else spec.n,
            eos_token_id=sorted(self.eos), pad_token_id=self.tokenizer.pad_token_id,
            stop_strings=list(spec.stop) or None, tokenizer=self.tokenizer if spec.stop else None)
        samples = []
        for row in out[:, len(prompt):].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in self.eos), len(row))
            samples.append(row[:cut])
        return samples

    @torch.no_grad()
    def _logprobs(self, prompt: list[int], samples: list[list[int]]) -> list[list[float]]:
        ids, mask, labels = pad_pairs([(prompt, s) for s in samples], self.tokenizer.pad_token_id)
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
        logp, _ = token_logps(logits, labels.to(self.device))
        start = len(prompt) - 1  # logp[:, t] scores token t + 1
        return [logp[i, start:start + len(s)].tolist() for i, s in enumerate(samples)]

    def generate(self, prompts: list[list[int]], spec: SamplingSpec) -> list[list[Completion]]:
        results = []
        for index, prompt in enumerate(prompts):
            samples = self._sample(prompt, spec, index)
            logprobs = self._logprobs(prompt, samples) if any(samples) else [[] for _ in samples]
            results.append([Completion(
                token_ids=s, logprobs=lp, text=self.tokenizer.decode(s, skip_special_tokens=True),
                finish_reason="stop" if (s and s[-1] in self.eos) or self._hit_stop(s, spec) else "length")
                for s, lp in zip(samples, logprobs)])
        return results

    def _hit_stop(self, tokens: list[int], spec: SamplingSpec) -> bool:
        text = self.tokenizer.decode(tokens)
        return any(text.endswith(stop) for stop in spec.stop) and len(tokens) < spec.max_new_tokens

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        state = {name: tensor for name, tensor in weights}
        with torch.no_grad():
            self.model.load_state_dict(state, strict=False)

    def fingerprint(self) -> tuple[float, float]:
        return weights_fingerprint(unique_tensors(self.model))

    def close(self) -> None:
        """Nothing to stop: the model lives in this process."""
