"""The vLLM engine: ``vllm.LLM`` behind the :class:`~rayalign.engines.base.GenerationEngine` interface.

A plain class, so a Ray rollout actor or a Ray Serve replica builds one in its own process. Three
settings carry the interface's promises:

- ``logprobs_mode="raw_logprobs"`` with ``SamplingParams(logprobs=0)``: vLLM reports the sampled
  token's log-prob from the logits before temperature / top-p, the number the learner recomputes.
- ``worker_extension_cls``: the weight-sync methods of :mod:`rayalign.engines.vllm_ext`, run inside
  vLLM's worker (``collective_rpc``), where the weights live.
- after a weight load the prefix cache is reset: vLLM would otherwise reuse KV blocks computed with the
  old weights for any prompt it has seen (measured: log-probs off by ~1 on a 200-token prompt).

Stop tokens come from the model: vLLM stops at the tokenizer's EOS and at every ``eos_token_id`` in
``generation_config.json`` (e.g. ChatML's ``<|im_end|>``).
"""

from __future__ import annotations

from typing import Iterable

import torch
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
from vllm.outputs import CompletionOutput

from rayalign.config import ModelConfig
from rayalign.engines import vllm_ext
from rayalign.engines.base import Completion, SamplingSpec


def sampling_params(spec: SamplingSpec, index: int = 0) -> SamplingParams:
    # temperature 0 is greedy in vLLM too (it then ignores top_p). A seed makes a request reproducible
    # whatever else is batched with it; prompt ``index`` gets seed + index * n so no two prompts share
    # a random stream (vLLM gives child i of an n-sample request seed + i).
    seed = None if spec.seed is None else spec.seed + index * spec.n
    return SamplingParams(
        n=1 if spec.temperature == 0 else spec.n, temperature=spec.temperature, top_p=spec.top_p,
        max_tokens=spec.max_new_tokens, seed=seed, stop=list(spec.stop), logprobs=0)


def copies_per_prompt(spec: SamplingSpec) -> int:
    """vLLM refuses n > 1 with greedy sampling, so greedy sends the prompt n times instead."""
    return spec.n if spec.temperature == 0 else 1


def to_completion(out: CompletionOutput) -> Completion:
    tokens = list(out.token_ids)
    return Completion(
        token_ids=tokens,
        logprobs=[step[token].logprob for token, step in zip(tokens, out.logprobs)],
        text=out.text,
        # vLLM says "stop" for a stop token or string, "length" at max_tokens ("abort" only on shutdown)
        finish_reason="stop" if out.finish_reason == "stop" else "length")


class VLLMEngine:
    def __init__(self, model: ModelConfig, *, max_model_len: int, gpu_memory_utilization: float = 0.2,
                 seed: int = 0, enforce_eager: bool = True):
        # LoRA runs merged: the learner sends full merged weights through load_weights.
        self.llm = LLM(
            model=model.name_or_path, tokenizer=model.tokenizer, revision=model.revision,
            dtype=model.dtype, trust_remote_code=model.trust_remote_code, seed=seed,
            max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager, logprobs_mode="raw_logprobs",
            worker_extension_cls=f"{vllm_ext.__name__}.{vllm_ext.WeightSyncExtension.__name__}")

    def generate(self, prompts: list[list[int]], spec: SamplingSpec) -> list[list[Completion]]:
        copies = copies_per_prompt(spec)
        requests = [TokensPrompt(prompt_token_ids=p) for p in prompts for _ in range(copies)]
        params = [sampling_params(spec, j) for j in range(len(prompts)) for _ in range(copies)]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [[to_completion(o) for out in outputs[i:i + copies] for o in out.outputs]
                for i in range(0, len(outputs), copies)]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.llm.collective_rpc("load_hf_weights", args=(vllm_ext.pack_weights(weights),))
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM engine: prefix cache not reset after a weight load (requests still "
                               "running?); cached KV would mix old and new weights")

    def fingerprint(self) -> tuple[float, float]:
        (fp,) = self.llm.collective_rpc("weights_fingerprint")  # one worker: no tensor parallelism
        return float(fp[0]), float(fp[1])

    def close(self) -> None:
        """Stop vLLM's engine-core and worker processes now rather than at garbage collection."""
        self.llm.llm_engine.engine_core.shutdown()
