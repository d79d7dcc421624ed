"""The vLLM engine: vLLM's ``AsyncLLM`` behind the :class:`~rayalign.engines.base.GenerationEngine`
interface, for RL rollout (batched ``generate``) and serving (``stream``, many concurrent requests into
one continuous batch).

A plain class, so a Ray rollout actor or a Ray Serve replica builds one in its own process. The async
engine runs on its own event-loop thread: synchronous callers (rollout actors, batch inference) block on
it, and async callers (a Serve replica's loop) get their pieces through a queue. Three settings carry
the interface's promises:

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
- on CPU, the model worker runs inside the engine-core process (``distributed_executor_backend="uni"``,
  which vLLM's CPU platform allows only with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``; ``AsyncLLM`` still
  runs its engine core as its own process). vLLM's default there is a separate worker process: one
  more spawn importing torch and vLLM (~10 s of start-up, ~1 GB), and a scheduler process busy beside
  the model's threads on a small machine. Measured on 2 cores: start 31-37 s -> 22-24 s, and the
  34M model's 32 x 128-token batch 8.9 s -> 6.0 s with 2 threads.

When the engine dies anyway, :class:`~rayalign.engines.base.EngineDied` carries the root cause its own
processes logged (``engines/vllm_errors.py``), not vLLM's "see stack trace above".

Stop tokens come from the model: vLLM stops at the tokenizer's EOS and at every ``eos_token_id`` in
``generation_config.json`` (e.g. ChatML's ``<|im_end|>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import threading
import uuid
from typing import AsyncIterator, Awaitable, Iterable, TypeVar

import torch
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from rayalign.config import ModelConfig
from rayalign.engines import vllm_errors, vllm_ext
from rayalign.engines.base import Completion, Delta, EngineDied, SamplingSpec

T = TypeVar("T")
MULTIPROCESSING = "VLLM_ENABLE_V1_MULTIPROCESSING"


def sampling_params(spec: SamplingSpec, index: int = 0,
                    kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY) -> SamplingParams:
    # temperature 0 is greedy in vLLM too (it then ignores top_p). A seed makes a request reproducible
    # whatever else is batched with it; prompt ``index`` gets seed + index * n so no two prompts share
    # a random stream (vLLM gives child i of an n-sample request seed + i).
    seed = None if spec.seed is None else spec.seed + index * spec.n
    return SamplingParams(
        n=1 if spec.temperature == 0 else spec.n, temperature=spec.temperature, top_p=spec.top_p,
        max_tokens=spec.max_new_tokens, seed=seed, stop=list(spec.stop), logprobs=spec.top_logprobs,
        output_kind=kind)


def copies_per_prompt(spec: SamplingSpec) -> int:
    """vLLM refuses n > 1 with greedy sampling, so greedy sends the prompt n times instead."""
    return spec.n if spec.temperature == 0 else 1


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


@contextlib.contextmanager
def _worker_in_engine_core(cpu: bool):
    """While the engine starts on CPU: the setting under which vLLM's CPU platform keeps the "uni"
    executor (it resolves the config here and the engine core inherits it). Restored afterwards, so
    this process's other vLLM users (a plain ``vllm.LLM``) keep vLLM's default."""
    before = os.environ.get(MULTIPROCESSING)
    if cpu:
        os.environ[MULTIPROCESSING] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(MULTIPROCESSING, None)
        else:
            os.environ[MULTIPROCESSING] = before


class VLLMEngine:
    def __init__(self, model: ModelConfig, *, max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.2, seed: int = 0, enforce_eager: bool = True):
        # LoRA runs merged: the learner sends full merged weights through load_weights.
        cpu = current_platform.is_cpu()
        args = AsyncEngineArgs(
            model=model.name_or_path, tokenizer=model.tokenizer, revision=model.revision,
            dtype=model.dtype, trust_remote_code=model.trust_remote_code, seed=seed,
            max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager, logprobs_mode="raw_logprobs", disable_log_stats=True,
            enable_chunked_prefill=not cpu, distributed_executor_backend="uni" if cpu else None,
            worker_extension_cls=f"{vllm_ext.__name__}.{vllm_ext.WeightSyncExtension.__name__}")
        self._errors = vllm_errors.new_error_file()  # before the engine's processes start: they inherit it
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine", daemon=True)
        self._thread.start()
        self.llm: AsyncLLM | None = None
        with _worker_in_engine_core(cpu):
            self.llm = self._run(self._start(args))
        self.max_model_len: int = self.llm.model_config.max_model_len

    @staticmethod
    async def _start(args: AsyncEngineArgs) -> AsyncLLM:
        return AsyncLLM.from_engine_args(args)  # built on the engine loop, so its output handler runs there

    def _run(self, coro: Awaitable[T]) -> T:
        """Run a coroutine on the engine's loop and wait for it (from any other thread)."""
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result()
        except Exception:
            if self.llm is not None and self.llm.errored:
                raise self._died() from None  # one line with the cause, not vLLM's chain of frames
            raise

    def _died(self) -> EngineDied:
        return EngineDied(f"vLLM engine died: {vllm_errors.root_cause(self._errors)}")

    def check_health(self) -> None:
        if self.llm.errored:
            raise self._died()

    async def _final(self, prompt: list[int], params: SamplingParams) -> RequestOutput:
        async for out in self.llm.generate(TokensPrompt(prompt_token_ids=prompt), params, uuid.uuid4().hex):
            final = out  # FINAL_ONLY: one output, all n completions
        return final

    def generate(self, prompts: list[list[int]], spec: SamplingSpec) -> list[list[Completion]]:
        copies = copies_per_prompt(spec)

        async def all_requests() -> list[RequestOutput]:  # submitted together: one continuous batch
            return await asyncio.gather(*(self._final(p, sampling_params(spec, j))
                                          for j, p in enumerate(prompts) for _ in range(copies)))

        outputs = self._run(all_requests())
        return [[to_completion(o, spec.top_logprobs) for out in outputs[i:i + copies] for o in out.outputs]
                for i in range(0, len(outputs), copies)]

    async def stream(self, prompt: list[int], spec: SamplingSpec) -> AsyncIterator[Delta]:
        # One request per completion i with seed + i: the same samples an n-request with the seed gives.
        caller, pieces = asyncio.get_running_loop(), asyncio.Queue()
        put = lambda item: caller.call_soon_threadsafe(pieces.put_nowait, item)  # noqa: E731

        async def one(i: int) -> None:
            seed = None if spec.seed is None else spec.seed + i
            params = sampling_params(dataclasses.replace(spec, n=1, seed=seed), kind=RequestOutputKind.DELTA)
            async for out in self.llm.generate(TokensPrompt(prompt_token_ids=prompt), params, uuid.uuid4().hex):
                for o in out.outputs:
                    put(to_delta(i, o, spec.top_logprobs))

        async def produce() -> None:
            try:
                await asyncio.gather(*(one(i) for i in range(spec.n)))
                put(None)
            except Exception as exc:  # handed to the caller's loop and raised there
                put(self._died() if self.llm.errored else exc)

        task = asyncio.run_coroutine_threadsafe(produce(), self._loop)
        try:
            while (item := await pieces.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            task.cancel()  # a client that went away: vLLM aborts the requests on cancellation

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        path = vllm_ext.write_weights(weights)
        try:
            self._run(self.llm.collective_rpc("load_hf_weights", args=(str(path),)))
        finally:
            path.unlink(missing_ok=True)
        if not self._run(self.llm.reset_prefix_cache()):
            raise RuntimeError("vLLM engine: prefix cache not reset after a weight load (requests still "
                               "running?); cached KV would mix old and new weights")

    def fingerprint(self, version: int = 0) -> tuple[float, float]:
        (fp,) = self._run(self.llm.collective_rpc("weights_fingerprint", args=(version,)))  # one worker: no tensor parallelism
        return float(fp[0]), float(fp[1])

    def close(self) -> None:
        """Stop vLLM's engine-core and worker processes now rather than at garbage collection."""
        async def shutdown() -> None:  # on the engine loop: it cancels the output-handler task living there
            self.llm.shutdown()

        self._run(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        del self.llm  # collected now, not at interpreter exit (where AsyncLLM.__del__ fails on torn-down globals)
        self._errors.unlink(missing_ok=True)
