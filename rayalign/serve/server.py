"""The OpenAI-compatible HTTP API as a Ray Serve deployment: each replica holds one generation engine
(vLLM or the HF fallback, the same classes the RL rollout workers run) and the model's tokenizer.

Routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (both streamed as
server-sent events with ``"stream": true``), ``GET /health``. Chat messages render through the model's
chat template exactly as RL prompts do (``data.collate.tokenize_prompt``); a vision-language model's replica
also takes ``image_url`` parts (``serve/images.py`` reads them) and renders through its processor.

Every refusal is an OpenAI error body with a 4xx status, checked in the order OpenAI checks: the API
key (401), the JSON body (400), the model name (404), the context length (400). A refused request
never reaches the engine, so the replica keeps serving.

A replica whose engine died answers 503 with the engine's root cause (OpenAI error JSON, as every other
failure: never a plain-text 500) and fails Serve's health check (``check_health``), so Serve replaces it.
"""

from __future__ import annotations

import hmac
import json
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from starlette.exceptions import HTTPException

from rayalign.config import ModelConfig, ServeConfig
from rayalign.data.collate import tokenize_prompt
from rayalign.engines.base import Delta, EngineDied, ImagePrompt, SamplingSpec, prompt_tokens
from rayalign.engines.build import build_engine
from rayalign.models.loading import load_tokenizer
from rayalign.models.vlm import is_vlm, load_processor
from rayalign.serve.images import chat_prompt
from rayalign.serve.limits import Queue, check_headers, check_size, read_body
from rayalign.serve.logprobs import TokenText
from rayalign.serve.protocol import (APIError, ChatRequest, CompletionRequest, envelope, error_body,
                                     response_id, usage)
from rayalign.workers.group import quiet_actor

app = FastAPI(title="rayalign OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)  # not open
ECHO_CHARS = 64  # of a client's value quoted back in an error (a 1 MB model name is not sent back)
SEED_RANGE = 2 ** 62  # the engines' seeds: a request's seed modulo this, leaving room for per-prompt offsets


def served_name(model: ModelConfig) -> str:
    """The model id a replica answers to by default: a hub id as it is; a local directory by its last two path
    parts (``sft/final``), never the server's full path."""
    path = Path(model.name_or_path)
    return "/".join(path.parts[-2:]) if path.is_absolute() or path.exists() else model.name_or_path


def model_id(model: ModelConfig, cfg: ServeConfig) -> str:
    """The id requests name: ``serve.served_model_name``, else ``served_name(model)``."""
    return cfg.served_model_name or served_name(model)


def _quoted(value: str) -> str:
    return value if len(value) <= ECHO_CHARS else value[:ECHO_CHARS] + f"... ({len(value)} characters)"


@app.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)


@app.exception_handler(EngineDied)
async def _engine_died(request: Request, exc: EngineDied) -> JSONResponse:
    return JSONResponse(error_body(f"serve replica: {exc}; it is being replaced, retry shortly",
                                   kind="server_error", code="engine_dead"), status_code=503)


@app.middleware("http")
async def _internal(request: Request, call_next) -> Any:
    """A failure no handler above took (a bug of ours, an engine's error on one request): still OpenAI JSON with
    its cause. A middleware, not an ``Exception`` handler: Starlette re-raises after those, and the client then
    got Serve's plain-text 500."""
    try:
        return await call_next(request)
    except Exception as exc:  # noqa: BLE001 - answered as JSON, logged by Serve
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {_quoted(str(exc))}",
                                       kind="server_error"), status_code=500)


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:  # unknown route, wrong method
    return JSONResponse(error_body(str(exc.detail), code=str(exc.status_code)), status_code=exc.status_code)


def _parse(model: type[BaseModel], raw: bytes) -> Any:
    """The request body, or a 400 naming the first bad field (or the JSON error)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise APIError(400, f"Unrecognized request argument supplied: {where}", param=where) from None
        if err["type"] == "json_invalid":
            raise APIError(400, f"We could not parse the JSON body of your request: {err['msg']}") from None
        raise APIError(400, f"{where}: {err['msg']}" if where else err["msg"], param=where or None) from None


@dataclass
class Choice:
    """One completion assembled from its stream pieces."""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[dict[int, float]] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"

    def add(self, d: Delta) -> None:
        self.tokens += d.token_ids
        self.logprobs += d.logprobs
        self.top += d.top_logprobs
        self.text += d.text
        self.finish_reason = d.finish_reason or self.finish_reason


def sse(body: dict | str) -> str:
    return f"data: {body if isinstance(body, str) else json.dumps(body)}\n\n"


@serve.deployment
@serve.ingress(app)
class OpenAIServer:
    def __init__(self, model: ModelConfig, cfg: ServeConfig, api_key: str | None):
        quiet_actor(cfg.torch_threads)
        self.cfg = cfg
        self.processor = load_processor(model) if is_vlm(model) else None  # a vision-language model's
        self.tokenizer = self.processor.tokenizer if self.processor else load_tokenizer(model)
        self.engine = build_engine(cfg.engine, model, max_model_len=cfg.max_model_len,
                                   gpu_memory_utilization=cfg.gpu_memory_utilization,
                                   kv_cache_gib=cfg.kv_cache_gib, use_gpu=cfg.num_gpus > 0, streaming=True)
        self.logprobs = TokenText(self.tokenizer)
        self.name = model_id(model, cfg)
        self.api_key = api_key
        self.created = int(time.time())
        self.queue = Queue(cfg)

    def check_health(self) -> None:
        """Serve's periodic health check: a replica whose engine died is replaced."""
        self.engine.check_health()

    # ---- routes -------------------------------------------------------------------------------------

    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._auth(request)
        return {"object": "list", "data": [
            {"id": self.name, "object": "model", "created": self.created, "owned_by": "rayalign",
             "max_model_len": self.engine.max_model_len}]}

    @app.get("/v1/models/{model_id:path}")
    async def model(self, model_id: str, request: Request) -> dict:
        self._auth(request)
        self._check_model(model_id)
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "rayalign"}

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Any:
        return await self._queued(request, self._chat)

    async def _queued(self, request: Request, answer) -> Any:
        """``answer(request)`` as one request of the replica's bounded queue (``limits.Queue``); a stream
        leaves the queue with its last chunk."""
        self._auth(request)
        self.queue.admit()
        try:
            response = await answer(request)
        except BaseException:
            self.queue.release()
            raise
        if not isinstance(response, StreamingResponse):
            self.queue.release()
        return response

    async def _chat(self, request: Request) -> Any:
        body: ChatRequest = _parse(ChatRequest, await read_body(request, self.cfg))
        self._check_model(body.model)
        self._check_no_tools(body)
        check_size(self.cfg, body.n, [m.text() for m in body.messages], "messages")
        prompt = self._chat_prompt(body)
        spec = self._spec(body, len(prompt_tokens(prompt)), body.top_k())
        rid = response_id("chatcmpl")
        if body.stream:
            return self._stream(self.queue.released(self._chat_chunks(rid, prompt, spec, body)))
        choices = await self._collect(prompt, spec)
        out = [{"index": i, "message": {"role": "assistant", "content": c.text, "refusal": None},
                "logprobs": self.logprobs.chat(c.tokens, c.logprobs, c.top) if body.logprobs else None,
                "finish_reason": c.finish_reason} for i, c in enumerate(choices)]
        return envelope(rid, "chat.completion", self.name, out,
                        usage(len(prompt_tokens(prompt)), sum(len(c.tokens) for c in choices)))

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Any:
        return await self._queued(request, self._completions)

    async def _completions(self, request: Request) -> Any:
        body: CompletionRequest = _parse(CompletionRequest, await read_body(request, self.cfg))
        self._check_model(body.model)
        check_size(self.cfg, body.n * len(body.prompts()), [p for p in body.prompts() if isinstance(p, str)], "prompt")
        prompts = [self._known_ids(p) if isinstance(p, list) else tokenize_prompt(self.tokenizer, p, None)
                   for p in body.prompts()]
        specs = [self._spec(body, len(p), body.logprobs or 0) for p in prompts]
        rid = response_id("cmpl")
        if body.stream:
            return self._stream(self.queue.released(self._completion_chunks(rid, prompts, specs, body)))
        out, completion_tokens = [], 0
        for p, (prompt, spec) in enumerate(zip(prompts, specs)):
            for i, c in enumerate(await self._collect(prompt, spec)):
                completion_tokens += len(c.tokens)
                out.append({"index": p * body.n + i, "text": c.text, "finish_reason": c.finish_reason,
                            "logprobs": None if body.logprobs is None else
                            self.logprobs.completion(c.tokens, c.logprobs, c.top)})
        return envelope(rid, "text_completion", self.name, out,
                        usage(sum(map(len, prompts)), completion_tokens))

    # ---- checks -------------------------------------------------------------------------------------

    def _auth(self, request: Request) -> None:
        check_headers(request, self.cfg)
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise APIError(401, "Incorrect API key provided" if token else
                           "You didn't provide an API key (Authorization: Bearer KEY)", code="invalid_api_key")

    def _chat_prompt(self, body: ChatRequest):
        """Token ids; with images (a vision-language model only), an ``ImagePrompt``."""
        if self.processor is not None:
            prompt = chat_prompt(body.messages, self.processor, self.cfg)
            return prompt if prompt.images else prompt.token_ids
        for i, message in enumerate(body.messages):
            if message.images():
                raise APIError(400, f"messages.{i}.content: the model `{self.name}` takes text only; image_url "
                               "parts need a vision-language model", param=f"messages.{i}.content",
                               code="images_not_supported")
        return tokenize_prompt(self.tokenizer, [{"role": m.role, "content": m.text()} for m in body.messages], None)

    @staticmethod
    def _check_no_tools(body: ChatRequest) -> None:
        """Tool calling is refused by name: this server has no tool-call parser, and a model without a tool
        template would take the tools' text for prompt."""
        for key in ("tools", "functions"):
            if getattr(body, key):
                raise APIError(400, f"{key}: this server does not call tools (no tool-call parser); send the "
                               "conversation without them", param=key, code="tools_not_supported")
        for i, message in enumerate(body.messages):
            if message.role in ("tool", "function") or message.tool_calls:
                where = f"messages.{i}." + ("tool_calls" if message.tool_calls else "role")
                raise APIError(400, f"{where}: tool messages need tool calling, which this server does not do",
                               param=where, code="tools_not_supported")

    def _structured(self, body) -> str | None:
        """``response_format`` as the engines' ``json_schema``: None (text), "" (any JSON object) or a schema."""
        fmt = getattr(body, "response_format", None)
        if fmt is None or fmt.type == "text":
            return None
        if self.cfg.engine != "vllm":
            raise APIError(400, f"response_format: {fmt.type} needs serve.engine vllm (the HF fallback has no "
                           "constrained decoding)", param="response_format")
        if fmt.type == "json_object":
            return ""
        if fmt.json_schema is None:
            raise APIError(400, "response_format.json_schema: required with type json_schema",
                           param="response_format.json_schema")
        return json.dumps(fmt.json_schema.schema_)

    def _bias(self, body) -> tuple[tuple[int, float], ...]:
        """``logit_bias`` with its keys checked: token ids, as text, inside the vocabulary."""
        out = []
        for key, bias in (body.logit_bias or {}).items():
            if not key.isdigit() or int(key) >= len(self.tokenizer):
                raise APIError(400, f"logit_bias: '{_quoted(key)}' is not a token id of this model (0 to "
                               f"{len(self.tokenizer) - 1})", param="logit_bias")
            out.append((int(key), bias))
        return tuple(out)

    def _known_ids(self, ids: list[int]) -> list[int]:
        vocab = len(self.tokenizer)
        if max(ids) >= vocab:
            raise APIError(400, f"prompt: token id {max(ids)} is outside the vocabulary (0 to {vocab - 1})",
                           param="prompt")
        return ids

    def _check_model(self, name: str) -> None:
        if name != self.name:
            raise APIError(404, f"The model `{_quoted(name)}` does not exist (this server has `{self.name}`)",
                           param="model", code="model_not_found")

    def _spec(self, body: ChatRequest | CompletionRequest, prompt_len: int, top_k: int) -> SamplingSpec:
        room = self.engine.max_model_len - prompt_len
        limit, cap = body.limit(), self.cfg.max_completion_tokens
        if cap is not None and limit is not None and limit > cap:
            raise APIError(400, f"max_tokens: {limit} is over this server's {cap} (serve.max_completion_tokens)",
                           param="max_tokens")
        if limit is None and cap is not None and room > 0:
            limit = min(cap, room)
        if room < 1 or (limit is not None and limit > room):
            raise APIError(400, f"This model's maximum context length is {self.engine.max_model_len} tokens. "
                           f"However, you requested {prompt_len + (limit or 1)} tokens ({prompt_len} in the "
                           f"prompt, {limit or 1} for the completion).", param="max_tokens",
                           code="context_length_exceeded")
        seed = None if body.seed is None else body.seed % SEED_RANGE
        return SamplingSpec(n=body.n, temperature=body.temperature, top_p=body.top_p,
                            max_new_tokens=limit or room, seed=seed, stop=body.stops(), top_logprobs=top_k,
                            presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                            logit_bias=self._bias(body), json_schema=self._structured(body))

    # ---- generation -------------------------------------------------------------------------------

    async def _collect(self, prompt: list[int] | ImagePrompt, spec: SamplingSpec) -> list[Choice]:
        choices = [Choice() for _ in range(spec.n)]
        async with self.queue.slots:
            async for d in self.engine.stream(prompt, spec):
                choices[d.index].add(d)
        return choices

    @staticmethod
    def _stream(chunks: AsyncIterator[str]) -> StreamingResponse:
        return StreamingResponse(chunks, media_type="text/event-stream")

    async def _chat_chunks(self, rid: str, prompt: list[int] | ImagePrompt, spec: SamplingSpec,
                           body: ChatRequest) -> AsyncIterator[str]:
        for i in range(spec.n):  # the role first, as OpenAI sends it
            yield sse(envelope(rid, "chat.completion.chunk", self.name, [
                {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None}]))
        tokens = 0
        async for d in self._guarded(prompt, spec):
            if isinstance(d, str):
                yield d
                yield sse("[DONE]")
                return
            tokens += len(d.token_ids)
            logprobs = self.logprobs.chat(d.token_ids, d.logprobs, d.top_logprobs) if body.logprobs else None
            yield sse(envelope(rid, "chat.completion.chunk", self.name, [
                {"index": d.index, "delta": {"content": d.text}, "logprobs": logprobs,
                 "finish_reason": d.finish_reason}]))
        if body.stream_options and body.stream_options.include_usage:
            yield sse(envelope(rid, "chat.completion.chunk", self.name, [], usage(len(prompt_tokens(prompt)), tokens)))
        yield sse("[DONE]")

    async def _completion_chunks(self, rid: str, prompts: list[list[int]], specs: list[SamplingSpec],
                                 body: CompletionRequest) -> AsyncIterator[str]:
        tokens, offsets = 0, {}  # each choice's text length so far: its next chunk's text_offset
        for p, (prompt, spec) in enumerate(zip(prompts, specs)):
            async for d in self._guarded(prompt, spec):
                if isinstance(d, str):
                    yield d
                    yield sse("[DONE]")
                    return
                tokens += len(d.token_ids)
                index = p * body.n + d.index
                logprobs = None if body.logprobs is None else self.logprobs.completion(
                    d.token_ids, d.logprobs, d.top_logprobs, offsets.get(index, 0))
                if logprobs and logprobs["tokens"]:
                    offsets[index] = logprobs["text_offset"][-1] + len(logprobs["tokens"][-1])
                yield sse(envelope(rid, "text_completion", self.name, [
                    {"index": index, "text": d.text, "finish_reason": d.finish_reason, "logprobs": logprobs}]))
        if body.stream_options and body.stream_options.include_usage:
            yield sse(envelope(rid, "text_completion", self.name, [], usage(sum(map(len, prompts)), tokens)))
        yield sse("[DONE]")

    async def _guarded(self, prompt: list[int] | ImagePrompt, spec: SamplingSpec) -> AsyncIterator[Delta | str]:
        """The engine's pieces; an engine failure mid-stream (headers already sent) becomes an error
        event, the way OpenAI reports one, instead of a cut connection."""
        try:
            async with self.queue.slots:
                async for d in self.engine.stream(prompt, spec):
                    yield d
        except EngineDied as exc:
            yield sse(error_body(f"serve replica: {exc}", kind="server_error", code="engine_dead"))
        except Exception as exc:  # noqa: BLE001 - reported to the client, logged by Serve
            yield sse(error_body(f"generation failed: {type(exc).__name__}: {_quoted(str(exc) or 'no message')}",
                                 kind="server_error"))
