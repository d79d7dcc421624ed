"""The one generation interface every consumer uses (RL rollout, serve, infer, judge).

Prompts go in as token ids (the caller renders chat templates, so RL, serving and evaluation tokenise
the same way); each prompt yields ``n`` :class:`Completion`s with the sampled token ids and the
log-probability of each sampled token under the engine's weights (raw model log-probs, before
temperature / top-p: the numbers the learner recomputes for the mismatch metric and the PPO ratio).
``stream`` yields the same completions piece by piece (:class:`Delta`), for serving.

``load_weights`` replaces the engine's weights with the learner's (full, unsharded tensors by HF
parameter name); ``fingerprint(version)`` is a cheap summary of the weights the engine is actually
running, equal to :func:`sync_fingerprint` of the same tensors, so a missed or partial sync is caught.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterable, Protocol

import torch


GREEDY_BELOW = 1e-5  # vLLM's _SAMPLING_EPS


@dataclass(frozen=True)
class SamplingSpec:
    n: int = 1                    # completions per prompt
    temperature: float = 1.0      # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int | None = None       # prompt j samples with seed + j * n (reproducible); None = engine's stream
    stop: tuple[str, ...] = ()    # stop strings (the EOS / end-of-turn token always stops)
    top_logprobs: int = 0         # also report the k most likely tokens at each step (serving)
    presence_penalty: float = 0.0   # OpenAI's: subtracted from the logit of every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: times how often the token was generated so far
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit), OpenAI's logit_bias
    json_schema: str | None = None  # constrained decoding to JSON: a JSON schema's text, or "" for any object

    @property
    def greedy(self) -> bool:
        """Temperatures below 1e-5 sample greedily, as vLLM treats them: dividing the logits by a denormal
        (5e-324, seen in fuzzing) gives inf, and sampling from that fails."""
        return self.temperature < GREEDY_BELOW


@dataclass(frozen=True)
class ImagePrompt:
    """A vision-language prompt: ``token_ids`` with each image already expanded to the model's image tokens
    (``data.vl_tokenize.prompt_ids``: what the HF model and the learners read), the images (PIL, already fitted to
    the data's ``max_image_side``) in the order their tokens appear, and ``template_ids``, the same prompt with
    one image token per image (what vLLM takes: it expands them itself). Engines take it wherever they take a
    list of token ids."""
    token_ids: list[int]
    images: tuple
    template_ids: list[int]


def prompt_tokens(prompt) -> list[int]:
    """The token ids of a prompt, with or without images."""
    return prompt.token_ids if isinstance(prompt, ImagePrompt) else prompt


@dataclass
class Completion:
    token_ids: list[int]                                  # sampled tokens, stop token included if hit
    logprobs: list[float] = field(default_factory=list)   # log pi(token_t | prefix), one per token_ids
    text: str = ""
    finish_reason: str = "length"                         # "stop" | "length"
    top_logprobs: list[dict[int, float]] = field(default_factory=list)  # per token: top-k id -> logprob


@dataclass
class Delta:
    """The next piece of completion ``index`` (0 <= index < n) while it is being generated."""
    index: int
    token_ids: list[int]
    logprobs: list[float]
    text: str
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    finish_reason: str | None = None                      # set on the completion's last piece


class GenerationEngine(Protocol):
    max_model_len: int  # prompt + completion tokens the engine accepts

    def generate(self, prompts: list[list[int]], spec: SamplingSpec) -> list[list[Completion]]:
        """For each prompt (token ids, or an :class:`ImagePrompt` on a vision-language model), ``spec.n``
        completions."""

    def stream(self, prompt: list[int], spec: SamplingSpec) -> AsyncIterator[Delta]:
        """Async: the ``spec.n`` completions of one prompt as they are produced; safe to call from many
        concurrent requests; closing the iterator early aborts the generation."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the weights (HF names, full tensors) in place."""

    def fingerprint(self, version: int = 0) -> tuple[float, float]:
        """``sync_fingerprint`` of the running weights at sync ``version``."""

    def check_health(self) -> None:
        """Raise :class:`EngineDied` when the engine can no longer generate."""

    def close(self) -> None:
        """Release the engine's processes and memory."""


class EngineDied(RuntimeError):
    """The engine's processes are gone: every later call fails too. The message is the root cause, one
    line; the caller adds which role and worker it was (rollout worker 0, serve replica)."""


def weights_fingerprint(tensors: Iterable[torch.Tensor]) -> tuple[float, float]:
    """(sum, sum of squares) of every element, in float64. Both are invariant to how an engine fuses,
    orders or repacks its weights (e.g. q/k/v into one qkv matrix), so an engine can compute it on its own
    layout and compare with the learner's HF tensors. Shared tensors must be passed once. (For a sync,
    :func:`sync_fingerprint`: the same over column blocks, which assumes the engine keeps HF's
    [out, in] orientation, as vLLM's Llama / Qwen / Mistral / Gemma layers do.)"""
    total, squares = 0.0, 0.0
    for t in tensors:
        t = t.detach().to(torch.float64)
        total += t.sum().item()
        squares += (t * t).sum().item()
    return total, squares


PROBE_COLUMNS = 64


def probe(t: torch.Tensor, version: int) -> torch.Tensor:
    """What the sync fingerprint reads of one weight at sync ``version``: of a matrix [rows, k], a block
    of ``PROBE_COLUMNS`` input columns (every row of them) that moves on by a block each sync and wraps,
    so each column is read every ceil(k / PROBE_COLUMNS) syncs; any other tensor whole. An engine reads
    the same columns back from its own kernels: fusing matrices along rows (q/k/v into qkv, gate/up)
    keeps the columns, and reading k columns of a packed kernel costs k/PROBE_COLUMNS times less than
    reading the whole matrix (the full read-back cost ~0.8 s a sync on a 34M model, 2 cores)."""
    if t.dim() != 2:
        return t
    return t[:, probe_columns(t.shape[1], version)]


def probe_columns(width: int, version: int) -> torch.Tensor:
    n = min(PROBE_COLUMNS, width)
    return (version * n + torch.arange(n)) % width


def sync_fingerprint(tensors: Iterable[torch.Tensor], version: int) -> tuple[float, float]:
    """:func:`weights_fingerprint` of each tensor's :func:`probe` at sync ``version``."""
    return weights_fingerprint(probe(t, version) for t in tensors)


def check_sync(engine_fp: tuple[float, float], learner_fp: tuple[float, float],
               rel: float = 1e-6) -> None:
    """Raise unless the engine runs the learner's weights: equal fingerprints to ``rel``. The learner
    must fingerprint the tensors as sent (same dtype as the engine's). The sum may cancel to near zero,
    so it may also differ by up to ``rel`` times the weights' norm, sqrt(sum of squares)."""
    norm = math.sqrt(abs(learner_fp[1]))
    same = (math.isclose(engine_fp[0], learner_fp[0], rel_tol=rel, abs_tol=rel * norm)
            and math.isclose(engine_fp[1], learner_fp[1], rel_tol=rel))
    if not same:  # NaN / inf fail too (a half-loaded fused layer in vLLM runs uninitialised memory)
        raise RuntimeError(f"weight sync check failed: engine fingerprint (sum, sum of squares) "
                           f"{engine_fp} != learner {learner_fp} (rel tol {rel})")
