"""The HF fallback engine: ``model.generate`` for models vLLM cannot load (``rollout.engine: hf``).

Sampling uses transformers' own ``generate`` (temperature, top-p, stop strings, EOS). The reported
log-probs are then recomputed with one forward pass over prompt + completion, so they are the raw model's
log-probs (before temperature / top-p), the same quantity the vLLM engine reports.

One request runs at a time (a lock; the model is not shared between threads). ``stream`` generates the
completions, then hands them out token by token: the HF fallback has no early first token.

A vision-language model (its config has a ``vision_config``) loads as ``AutoModelForImageTextToText`` with its
processor, and takes :class:`ImagePrompt`s: their images go through the image processor and into both the
generation and the log-prob pass.
"""

from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator, Iterable

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from rayalign.config import ModelConfig
from rayalign.data.collate import pad_pairs
from rayalign.engines.base import Completion, Delta, ImagePrompt, SamplingSpec, prompt_tokens, sync_fingerprint
from rayalign.models.loading import load_model, load_tokenizer
from rayalign.models.vlm import is_vlm, load_processor


class Penalties(LogitsProcessor):
    """OpenAI's presence and frequency penalties, on the tokens generated so far (not the prompt's), as vLLM
    applies them: logit - frequency x count - presence x (count > 0)."""

    def __init__(self, prompt_len: int, presence: float, frequency: float):
        self.start, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids[:, self.start:]
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


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
        self.processor = load_processor(model) if is_vlm(model) else None
        self.tokenizer = self.processor.tokenizer if self.processor else load_tokenizer(model)
        self.model = load_model(model, apply_lora=False, head="vl" if self.processor else "lm").to(device).eval()
        self.device = torch.device(device)
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.eos.add(self.tokenizer.eos_token_id)
        # a vision-language model never samples its image placeholder: a completion holding one would make the
        # next forward (the log-prob pass, the learner's) look for an image it does not have
        self.banned = [self.processor.image_token_id] if self.processor else None
        self.max_model_len: int = self.model.config.get_text_config().max_position_embeddings
        self._lock = threading.Lock()

    def _images(self, prompt, copies: int) -> dict[str, torch.Tensor]:
        """The image processor's tensors for ``copies`` rows of ``prompt`` (none for a text prompt)."""
        if not isinstance(prompt, ImagePrompt) or not prompt.images:
            return {}
        if self.processor is None:
            raise ValueError("this model takes text only: a prompt with images needs a vision-language model")
        tensors = self.processor.image_processor(list(prompt.images) * copies, return_tensors="pt")
        return {k: v.to(self.device) for k, v in tensors.items()}

    def _sample(self, prompt, spec: SamplingSpec, index: int) -> list[list[int]]:
        if spec.json_schema is not None:
            raise ValueError("JSON-constrained decoding needs the vLLM engine (the HF fallback has none)")
        if spec.seed is not None:
            torch.manual_seed(spec.seed + index * spec.n)
        greedy = spec.greedy
        tokens = prompt_tokens(prompt)
        copies = spec.n if greedy else 1  # greedy: n copies
        ids = torch.tensor([tokens] * copies, device=self.device)
        out = self.model.generate(
            ids, attention_mask=torch.ones_like(ids), **self._images(prompt, copies),
            max_new_tokens=spec.max_new_tokens,
            do_sample=not greedy, temperature=None if greedy else spec.temperature,
            top_p=None if greedy else spec.top_p, top_k=None, num_return_sequences=1 if greedy else spec.n,
            eos_token_id=sorted(self.eos), pad_token_id=self.tokenizer.pad_token_id,
            stop_strings=list(spec.stop) or None, tokenizer=self.tokenizer if spec.stop else None,
            suppress_tokens=self.banned, sequence_bias={(t,): b for t, b in spec.logit_bias} or None,
            logits_processor=LogitsProcessorList([Penalties(len(tokens), spec.presence_penalty, spec.frequency_penalty)])
            if spec.presence_penalty or spec.frequency_penalty else None)
        samples = []
        for row in out[:, len(tokens):].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in self.eos), len(row))
            samples.append(row[:cut])
        return samples

    @torch.no_grad()
    def _logprobs(self, prompt, samples: list[list[int]], k: int
                  ) -> tuple[list[list[float]], list[list[dict[int, float]]]]:
        """Per sample: each token's log-prob and (k > 0) the k best tokens at each step."""
        images = self._images(prompt, len(samples))
        prompt = prompt_tokens(prompt)
        ids, mask, labels = pad_pairs([(prompt, s) for s in samples], self.tokenizer.pad_token_id)
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **images).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # column t scores token t + 1
        target = labels[:, 1:].to(self.device).clamp(min=0)  # -100 (prompt, padding) is never read
        picked = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        start = len(prompt) - 1
        sampled = [picked[i, start:start + len(s)].tolist() for i, s in enumerate(samples)]
        if not k:
            return sampled, [[] for _ in samples]
        values, indices = logp.topk(k, dim=-1)
        top = [[dict(zip(indices[i, t].tolist(), values[i, t].tolist())) for t in range(start, start + len(s))]
               for i, s in enumerate(samples)]
        return sampled, top

    def generate(self, prompts: list, spec: SamplingSpec) -> list[list[Completion]]:
        with self._lock:
            return [self._complete(prompt, spec, index) for index, prompt in enumerate(prompts)]

    def _complete(self, prompt, spec: SamplingSpec, index: int) -> list[Completion]:
        samples = self._sample(prompt, spec, index)
        empty = [[] for _ in samples]
        logprobs, top = self._logprobs(prompt, samples, spec.top_logprobs) if any(samples) else (empty, empty)
        return [Completion(
            token_ids=s, logprobs=lp, text=self.tokenizer.decode(s, skip_special_tokens=True), top_logprobs=tp,
            finish_reason="stop" if (s and s[-1] in self.eos) or self._hit_stop(s, spec) else "length")
            for s, lp, tp in zip(samples, logprobs, top)]

    async def stream(self, prompt, spec: SamplingSpec) -> AsyncIterator[Delta]:
        [completions] = await asyncio.to_thread(self.generate, [prompt], spec)
        for index, c in enumerate(completions):
            text = ""
            for t, token in enumerate(c.token_ids):
                upto = self.tokenizer.decode(c.token_ids[:t + 1], skip_special_tokens=True)
                last = t == len(c.token_ids) - 1
                yield Delta(index=index, token_ids=[token], logprobs=[c.logprobs[t]], text=upto[len(text):],
                            top_logprobs=c.top_logprobs[t:t + 1], finish_reason=c.finish_reason if last else None)
                text = upto
            if not c.token_ids:
                yield Delta(index=index, token_ids=[], logprobs=[], text="", finish_reason=c.finish_reason)

    def _hit_stop(self, tokens: list[int], spec: SamplingSpec) -> bool:
        text = self.tokenizer.decode(tokens)
        return any(text.endswith(stop) for stop in spec.stop) and len(tokens) < spec.max_new_tokens

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        state = {name: tensor for name, tensor in weights}
        with torch.no_grad():
            self.model.load_state_dict(state, strict=False)

    def fingerprint(self, version: int = 0) -> tuple[float, float]:
        return sync_fingerprint(unique_tensors(self.model), version)

    def check_health(self) -> None:
        """Always healthy: the model lives in this process, which dies with it."""

    def close(self) -> None:
        """Nothing to stop: the model lives in this process."""
