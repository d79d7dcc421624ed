"""Bounded work per request and per replica (issue 21), all from ``serve:`` config and all checked before the
engine: header bytes (431), body bytes (413, before parsing), a client too slow to send its body (408),
prompt characters before tokenizing and prompts x n (400), and a bounded queue per replica (429 with
``Retry-After``). ``max_tokens`` is capped where the sampling spec is built (``server._spec``).

What a replica cannot bound: Ray Serve's HTTP proxy (uvicorn) reads the headers before any replica sees the
request and has no header-size or header-read timeout of its own. Exposed beyond a trusted network, put a
reverse proxy in front (README, "Serving").
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from starlette.requests import Request

from rayalign.config import ServeConfig
from rayalign.serve.protocol import APIError

RETRY_AFTER_S = 1  # what a 429 tells the client to wait


def check_headers(request: Request, cfg: ServeConfig) -> None:
    """Header bytes over ``serve.max_header_bytes``: 431, before the key is compared or the body read."""
    size = sum(len(k) + len(v) + 4 for k, v in request.headers.raw)
    if size > cfg.max_header_bytes:
        raise APIError(431, f"the request headers are {size} bytes, over this server's {cfg.max_header_bytes} "
                       "(serve.max_header_bytes)", code="request_header_fields_too_large")


async def read_body(request: Request, cfg: ServeConfig) -> bytes:
    """The body, read no further than ``serve.max_body_bytes`` (413 past it, before any parsing) and given up
    with a 408 when the client sends nothing for ``serve.body_timeout_s`` (a slow or stalled client)."""
    cap = cfg.max_body_bytes
    declared = request.headers.get("content-length", "")
    too_big = APIError(413, f"the request body is over this server's {cap} bytes (serve.max_body_bytes)",
                       code="request_too_large")
    if declared.isdigit() and int(declared) > cap:
        raise too_big
    chunks, size, stream = [], 0, request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), cfg.body_timeout_s)
        except StopAsyncIteration:
            return b"".join(chunks)
        except asyncio.TimeoutError:
            raise APIError(408, f"the request body stalled: nothing arrived for {cfg.body_timeout_s:g} s after "
                           f"{size} bytes (serve.body_timeout_s)", code="request_timeout") from None
        size += len(chunk)
        if size > cap:
            raise too_big
        chunks.append(chunk)


def check_size(cfg: ServeConfig, choices: int, texts: list[str], param: str) -> None:
    """Bounded work before tokenizing: prompts x n (``serve.max_choices``) and prompt characters
    (``serve.max_prompt_chars``)."""
    if choices > cfg.max_choices:
        raise APIError(400, f"n: {choices} completions in one request (prompts x n); this server takes at most "
                       f"{cfg.max_choices} (serve.max_choices)", param="n")
    chars = sum(map(len, texts))
    if chars > cfg.max_prompt_chars:
        raise APIError(400, f"{param}: {chars} characters of prompt text; this server takes at most "
                       f"{cfg.max_prompt_chars} (serve.max_prompt_chars)", param=param,
                       code="context_length_exceeded")


class Queue:
    """A replica's bounded queue: ``serve.max_ongoing_requests`` generate at once (``slots``) and
    ``serve.max_queued_requests`` wait; past both, a 429 with ``Retry-After`` (the client backs off) instead
    of an ever longer wait for everyone. A request is held from ``admit`` until ``release``; a stream until
    its last chunk (``released``)."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.held = 0
        self.slots = asyncio.Semaphore(cfg.max_ongoing_requests)

    def admit(self) -> None:
        limit = self.cfg.max_ongoing_requests + self.cfg.max_queued_requests
        if self.held >= limit:
            raise APIError(429, f"this replica holds {limit} requests (serve.max_ongoing_requests "
                           f"{self.cfg.max_ongoing_requests} + serve.max_queued_requests "
                           f"{self.cfg.max_queued_requests}); retry after {RETRY_AFTER_S} s",
                           code="rate_limit_exceeded", headers={"Retry-After": str(RETRY_AFTER_S)})
        self.held += 1

    def release(self) -> None:
        self.held -= 1

    async def released(self, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        """A stream's chunks; its request leaves the queue with the last one (or when the client goes)."""
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            self.release()
