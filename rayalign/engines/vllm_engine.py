"""The vLLM engine for batches (RL rollout, batch inference, evaluation): ``vllm.LLM`` running in this
process, behind the :class:`~rayalign.engines.base.GenerationEngine` interface. Serving (many concurrent
requests, streamed) uses ``AsyncLLM`` instead: :mod:`rayalign.engines.vllm_serving`, which shares the
settings and helpers of this module.

A plain class, so a Ray rollout actor builds one in its own process. The settings that carry the
interface's promises (both engines):

- ``logprobs_mode="raw_logprobs"`` with ``SamplingParams(logprobs=k)``: vLLM reports the sampled
  token's log-prob from the logits before temperature / top-p, the number the learner recomputes.
- ``worker_extension_cls``: the weight-sync methods of :mod:`rayalign.engines.vllm_ext`, run inside
  vLLM's worker (``collective_rpc``), where the weights live.
- after a weight load the prefix cache is reset: vLLM would otherwise reuse KV blocks computed with the
  old weights for any prompt it has seen (measured: log-probs off by ~1 on a 200-token prompt).
- on CPU, no chunked prefill. When the scheduler splits a prompt's prefill over steps, vLLM discards
  the token sampled after the partial prefill and rewinds a seeded request's generator
  (``gen.set_offset(gen.get_offset() - 4)`` in its model runner, CUDA-only: CPU generators have no
  offset), and the engine core dies with "CPU Generator does not use offset". Any batch of seeded
  requests whose prompts exceed the step's token budget triggers it (the RL rollout's 16 x 8 samples;
  a client sending ``seed``). Without chunked prefill a prompt is prefilled in one step (vLLM raises
  the budget to at least ``max_model_len``), nothing is discarded, and each seeded request's samples
  stay a function of its seed alone. CUDA generators rewind, so GPUs keep chunked prefill.
- one process: the scheduler and the model worker run in the process that builds the engine
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` while it starts, ``distributed_executor_backend="uni"``).
  vLLM's default spawns an engine-core process and, on CPU, a worker process beside it, each importing
  torch and vLLM, with every decode step's outputs crossing between them. Measured on 2 cores, tiny
  model / 34M model, 32 x 128 tokens: start 25 -> 12 s, generation 1.2-2.7 -> 0.6-1.0 s / 5.1-6.5 ->
  3.0-3.5 s. The engine is then this process's: vLLM's CPU worker sets up a one-rank gloo group here
  (taken down at ``close``) and replaces ``torch.set_num_threads`` with a no-op (restored after the
  start); the model runs on this process's torch threads.

An exception while the engine generates leaves its requests half-done inside it: the engine is not
used again (:class:`~rayalign.engines.base.EngineDied`, with the cause in one line), and a rollout
worker is replaced. Stop tokens come from the model: vLLM stops at the tokenizer's EOS and at every
``eos_token_id`` in ``generation_config.json`` (e.g. ChatML's ``<|im_end|>``).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from typing import Any, Iterable

import torch
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
from vllm.config import StructuredOutputsConfig
from vllm.outputs import CompletionOutput
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from rayalign.config import ModelConfig
from rayalign.engines import vllm_errors, vllm_ext
from rayalign.engines.base import Completion, Delta, EngineDied, ImagePrompt, SamplingSpec

MULTIPROCESSING = "VLLM_ENABLE_V1_MULTIPROCESSING"
_alive: set[int] = set()  # the in-process engine of this process, while it is open (at most one)


def one_per_process_taken() -> bool:
    """Whether this process already runs an in-process engine. vLLM's distributed state (its one-rank
    group) is per process and each engine's shutdown takes it down: a second engine in the same process
    (``evaluate``'s baseline, ``compare``'s second model) is the serving engine, out of process."""
    return bool(_alive)


def engine_args(model: ModelConfig, *, max_model_len: int | None, gpu_memory_utilization: float, seed: int,
                enforce_eager: bool) -> dict[str, Any]:
    """vLLM's engine arguments, the same for both engines (see the module's docstring)."""
    cpu = current_platform.is_cpu()
    return dict(
        model=model.name_or_path, tokenizer=model.tokenizer, revision=model.revision, dtype=model.dtype,
        trust_remote_code=model.trust_remote_code, seed=seed, max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
        logprobs_mode="raw_logprobs", disable_log_stats=True, enable_chunked_prefill=not cpu,
        distributed_executor_backend="uni",
        # response_format JSON as compact JSON: with whitespace allowed between tokens a small model pads forever
        # (seen: "{\r\r\r..."); the request-level flag alone did not take
        structured_outputs_config=StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True),
        worker_extension_cls=f"{vllm_ext.__name__}.{vllm_ext.WeightSyncExtension.__name__}")


@contextlib.contextmanager
def single_process(on: bool = True):
    """While an engine starts (``on``): vLLM's multiprocessing off (the in-process engine keeps its core here;
    ``AsyncLLM`` still spawns its core, and vLLM's CPU platform then keeps the "uni" executor inside it
    instead of another worker process). Restored afterwards, with ``torch.set_num_threads``, which
    vLLM's CPU worker replaces, so this process's other users keep both."""
    before, set_threads = os.environ.get(MULTIPROCESSING), torch.set_num_threads
    if on:
        os.environ[MULTIPROCESSING] = "0"
    try:
        yield
    finally:
        torch.set_num_threads = set_threads
        if before is None:
            os.environ.pop(MULTIPROCESSING, None)
        else:
            os.environ[MULTIPROCESSING] = before


def image_token_ids(hf_config) -> tuple[int, ...]:
    """A vision-language model's image placeholder token: never sampled (a completion holding one would make the
    learner's forward look for an image it does not have)."""
    ids = {getattr(hf_config, key, None) for key in ("image_token_id", "image_token_index")}
    return tuple(sorted(i for i in ids if isinstance(i, int)))


def sampling_params(spec: SamplingSpec, index: int = 0, kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY,
                    banned: tuple[int, ...] = ()) -> SamplingParams:
    # temperature 0 (below 1e-5) is greedy in vLLM too (it then ignores top_p). A seed makes a request reproducible
    # whatever else is batched with it; prompt ``index`` gets seed + index * n so no two prompts share
    # a random stream (vLLM gives child i of an n-sample request seed + i).
    seed = None if spec.seed is None else spec.seed + index * spec.n
    structured = None
    if spec.json_schema is not None:
        structured = (StructuredOutputsParams(json_object=True) if spec.json_schema == ""
                      else StructuredOutputsParams(json=json.loads(spec.json_schema)))
    return SamplingParams(
        n=1 if spec.greedy else spec.n, temperature=0.0 if spec.greedy else spec.temperature, top_p=spec.top_p,
        max_tokens=spec.max_new_tokens, seed=seed, stop=list(spec.stop), logprobs=spec.top_logprobs,
        presence_penalty=spec.presence_penalty, frequency_penalty=spec.frequency_penalty, structured_outputs=structured,
        # raw log-probs come before the bias; the image placeholder is never sampled
        output_kind=kind, logit_bias={**dict(spec.logit_bias), **{t: -100.0 for t in banned}} or None)


def tokens_prompt(prompt) -> TokensPrompt:
    """Token ids, or an :class:`ImagePrompt` as its template ids (one image token per image: vLLM expands token
    prompts again, ids already expanded would get a second expansion) with its images as multimodal data."""
    if isinstance(prompt, ImagePrompt):
        return TokensPrompt(prompt_token_ids=prompt.template_ids, multi_modal_data={"image": list(prompt.images)})
    return TokensPrompt(prompt_token_ids=prompt)


def copies_per_prompt(spec: SamplingSpec) -> int:
    """vLLM refuses n > 1 with greedy sampling, so greedy sends the prompt n times instead."""
    return spec.n if spec.greedy else 1


def _logprobs(out: CompletionOutput, k: int) -> tuple[list[float], list[dict[int, float]]]:
    """The sampled tokens' log-probs and, with k > 0, the k best tokens at each step (vLLM ranks from 1)."""
    steps = list(zip(out.token_ids, out.logprobs or []))
    sampled = [step[token].logprob for token, step in steps]
    top = [{t: lp.logprob for t, lp in step.items() if lp.rank is not None and lp.rank <= k}
           for _, step in steps] if k else []
    return sampled, top


def _finish(reason: str | None) -> str | None:
    """vLLM says "stop" for a stop token or string, "length" at max_tokens ("abort" only on shutdown);
    None while the completion is still running."""
    return None if reason is None else "stop" if reason == "stop" else "length"


def to_completion(out: CompletionOutput, k: int = 0) -> Completion:
    logprobs, top = _logprobs(out, k)
    return Completion(
        token_ids=list(out.token_ids), logprobs=logprobs, text=out.text, top_logprobs=top,
        finish_reason=_finish(out.finish_reason) or "length")


def to_delta(index: int, out: CompletionOutput, k: int) -> Delta:
    logprobs, top = _logprobs(out, k)
    return Delta(index=index, token_ids=list(out.token_ids), logprobs=logprobs, text=out.text,
                 top_logprobs=top, finish_reason=_finish(out.finish_reason))


class WeightSync:
    """``load_weights`` and ``fingerprint`` through vLLM's worker extension, for both engines; they
    provide ``_rpc(method, *args)`` (one worker's result: no tensor parallelism), ``_reset_prefix_cache`` and
    ``_reset_encoder_cache``."""

    def _rpc(self, method: str, *args: Any) -> Any:
        raise NotImplementedError

    def _reset_prefix_cache(self) -> bool:
        raise NotImplementedError

    def _reset_encoder_cache(self) -> None:
        raise NotImplementedError

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        path = vllm_ext.write_weights(weights)
        try:
            self._rpc("load_hf_weights", str(path))
        finally:
            path.unlink(missing_ok=True)
        if not self._reset_prefix_cache():
            raise RuntimeError("vLLM engine: prefix cache not reset after a weight load (requests still "
                               "running?); cached KV would mix old and new weights")
        # image embeddings cached by the old vision tower: the reload empties the runner's cache, and the
        # scheduler's record of it must go too (else "Encoder cache miss" on the next image it saw before)
        self._reset_encoder_cache()

    def fingerprint(self, version: int = 0) -> tuple[float, float]:
        fp = self._rpc("weights_fingerprint", version)
        return float(fp[0]), float(fp[1])


class VLLMEngine(WeightSync):
    def __init__(self, model: ModelConfig, *, max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.2, seed: int = 0, enforce_eager: bool = True):
        # LoRA runs merged: the learner sends full merged weights through load_weights.
        if one_per_process_taken():
            raise RuntimeError("one in-process vLLM engine per process: build_engine gives the second one "
                               "its own process")
        with single_process():
            self.llm = LLM(**engine_args(model, max_model_len=max_model_len, seed=seed, enforce_eager=enforce_eager,
                                         gpu_memory_utilization=gpu_memory_utilization))
        _alive.add(id(self))
        self.max_model_len: int = self.llm.llm_engine.model_config.max_model_len
        self.banned = image_token_ids(self.llm.llm_engine.model_config.hf_config)
        self._failed: str | None = None  # the cause, once an exception left requests inside the engine

    def generate(self, prompts: list[list[int]], spec: SamplingSpec) -> list[list[Completion]]:
        self.check_health()
        copies = copies_per_prompt(spec)
        requests = [(tokens_prompt(p), sampling_params(spec, j, banned=self.banned))
                    for j, p in enumerate(prompts) for _ in range(copies)]
        try:  # one call: one continuous batch, the outputs in the order of the requests
            outputs = self.llm.generate([r for r, _ in requests], [s for _, s in requests], use_tqdm=False)
        except Exception as exc:
            if not self.llm.llm_engine.has_unfinished_requests():
                raise  # refused before generating (e.g. a prompt too long): the engine is as it was
            self._failed = vllm_errors.one_line(exc)
            raise self._died() from exc
        return [[to_completion(o, spec.top_logprobs) for out in outputs[i:i + copies] for o in out.outputs]
                for i in range(0, len(outputs), copies)]

    def _rpc(self, method: str, *args: Any) -> Any:
        self.check_health()
        (result,) = self.llm.collective_rpc(method, args=args)
        return result

    def _reset_prefix_cache(self) -> bool:
        return self.llm.reset_prefix_cache()

    def _reset_encoder_cache(self) -> None:
        self.llm.llm_engine.reset_encoder_cache()

    def _died(self) -> EngineDied:
        return EngineDied(f"vLLM engine failed while generating: {self._failed}")

    def check_health(self) -> None:
        if self._failed is not None:
            raise self._died()

    def stream(self, prompt: list[int], spec: SamplingSpec):
        raise TypeError("the batch vLLM engine does not stream: build_engine(..., streaming=True) gives "
                        "the serving engine")

    def close(self) -> None:
        """Free the engine's memory (vLLM's shutdown also takes down its one-rank group here)."""
        if id(self) not in _alive:
            return
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        _alive.discard(id(self))
        gc.collect()
