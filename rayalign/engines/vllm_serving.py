"""The vLLM engine for serving: vLLM's ``AsyncLLM`` behind the
:class:`~rayalign.engines.base.GenerationEngine` interface, many concurrent requests (``stream``, and
``generate``) in one continuous batch. Its settings and helpers are the batch engine's
(:mod:`rayalign.engines.vllm_engine`); what differs is the process layout and the event loop.

A plain class, so a Ray Serve replica (or ``rayalign infer``'s chat) builds one in its own process. The
async engine runs on its own event-loop thread: synchronous callers block on it, and async callers (a
Serve replica's loop) get their pieces through a queue. ``AsyncLLM`` runs its engine core as a process
of its own; on CPU the model worker runs inside it (the "uni" executor, which vLLM's CPU platform allows
only with multiprocessing off while the engine starts) rather than in a third process: measured on 2
cores, start 31-37 -> 22-24 s, and the 34M model's 32 x 128-token batch 8.9 -> 6.0 s with 2 threads.

When the engine core dies, :class:`~rayalign.engines.base.EngineDied` carries the root cause its
process logged (``engines/vllm_errors.py``), not vLLM's "see stack trace above".
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import uuid
from typing import Any, AsyncIterator, Awaitable, TypeVar

from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.outputs import RequestOutput
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from rayalign.config import ModelConfig
from rayalign.engines import vllm_errors
from rayalign.engines.base import Completion, Delta, EngineDied, SamplingSpec
from rayalign.engines.vllm_engine import (WeightSync, copies_per_prompt, engine_args, image_token_ids,
                                          sampling_params, single_process, to_completion, to_delta, tokens_prompt)

T = TypeVar("T")


class AsyncVLLMEngine(WeightSync):
    def __init__(self, model: ModelConfig, *, max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.2, seed: int = 0, enforce_eager: bool = True):
        # LoRA runs merged: the learner sends full merged weights through load_weights.
        cpu = current_platform.is_cpu()
        args = AsyncEngineArgs(**engine_args(model, max_model_len=max_model_len, seed=seed, enforce_eager=enforce_eager,
                                             gpu_memory_utilization=gpu_memory_utilization))
        if not cpu:
            args.distributed_executor_backend = None  # vLLM's own choice in the engine core on GPUs
        self._errors = vllm_errors.new_error_file()  # before the engine's processes start: they inherit it
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine", daemon=True)
        self._thread.start()
        self.llm: AsyncLLM | None = None
        with single_process(cpu):
            self.llm = self._run(self._start(args))
        self.max_model_len: int = self.llm.model_config.max_model_len
        self.banned = image_token_ids(self.llm.model_config.hf_config)

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
        async for out in self.llm.generate(tokens_prompt(prompt), params, uuid.uuid4().hex):
            final = out  # FINAL_ONLY: one output, all n completions
        return final

    def generate(self, prompts: list[list[int]], spec: SamplingSpec) -> list[list[Completion]]:
        copies = copies_per_prompt(spec)

        async def all_requests() -> list[RequestOutput]:  # submitted together: one continuous batch
            return await asyncio.gather(*(self._final(p, sampling_params(spec, j, banned=self.banned))
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
            params = sampling_params(dataclasses.replace(spec, n=1, seed=seed), kind=RequestOutputKind.DELTA,
                                     banned=self.banned)
            async for out in self.llm.generate(tokens_prompt(prompt), params, uuid.uuid4().hex):
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

    def _rpc(self, method: str, *args: Any) -> Any:
        (result,) = self._run(self.llm.collective_rpc(method, args=args))  # one worker: no tensor parallelism
        return result

    def _reset_prefix_cache(self) -> bool:
        return self._run(self.llm.reset_prefix_cache())

    def _reset_encoder_cache(self) -> None:
        self._run(self.llm.reset_encoder_cache())

    def close(self) -> None:
        """Stop vLLM's engine-core process now rather than at garbage collection."""
        async def shutdown() -> None:  # on the engine loop: it cancels the output-handler task living there
            self.llm.shutdown()

        self._run(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        del self.llm  # collected now, not at interpreter exit (where AsyncLLM.__del__ fails on torn-down globals)
        self._errors.unlink(missing_ok=True)
