"""The OpenAI API shapes we serve: request bodies (validated; unknown fields refused, as OpenAI does),
response and stream-chunk bodies, and the error body ``{"error": {message, type, param, code}}``.

Bodies are parsed strictly, as OpenAI's API does: ``true`` is not a number, ``"yes"`` not a boolean, NaN and
Infinity are refused, ``seed`` is a signed 64-bit integer, ``stop`` strings are not empty (at most 4), and
``top_logprobs`` needs ``logprobs: true``. What needs the model (token ids against its vocabulary, the context
length) is checked by the server, still before the engine.

Kept to the subset of /v1/chat/completions and /v1/completions the engines implement. Log-probs are
the raw model's (before temperature / top-p), as vLLM reports them by default.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

INT64 = 2 ** 63
MAX_STOPS = 4


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    n: int = Field(1, ge=1, le=32)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-INT64, le=INT64 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None  # token id (as text) -> bias

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if any(s == "" for s in stops):
            raise ValueError("a stop sequence must not be empty")
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences, got {len(stops)}")
        return stop

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ImageURL(_Body):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"  # accepted as OpenAI does; the processor decides the size


class ImagePart(_Body):
    type: Literal["image_url"]
    image_url: ImageURL


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer", "tool", "function"]  # the last two: refused by name
    content: str | list[Annotated[TextPart | ImagePart, Field(discriminator="type")]] | None = Field(
        None, validate_default=True)  # checked when left out, too
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _content(cls, content, info: ValidationInfo):
        if content is None and info.data.get("role") != "assistant":
            raise ValueError("only an assistant message may have null content")
        return content

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(
            p.text for p in self.content or [] if isinstance(p, TextPart))

    def images(self) -> list[ImagePart]:
        return [] if isinstance(self.content, str) else [p for p in self.content or [] if isinstance(p, ImagePart)]


class JSONSchema(_Body):
    name: str
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchema | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    response_format: ResponseFormat | None = None
    # accepted so agent clients parse, refused by name when used: this server calls no tools
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value, info: ValidationInfo):
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return value

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def top_k(self) -> int:
        return (self.top_logprobs or 0) if self.logprobs else 0


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    logprobs: int | None = Field(None, ge=0, le=5)

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt):
        prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt
        if not prompts:
            raise ValueError("must hold at least one prompt")
        for p in prompts:
            if len(p) == 0:
                raise ValueError("a prompt must not be empty")
            if not isinstance(p, str) and min(p) < 0:
                raise ValueError(f"token ids are not negative, got {min(p)}")
        return prompt

    def limit(self) -> int | None:
        return self.max_tokens

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class APIError(Exception):
    """A request the server refuses: answered with ``status`` and the OpenAI error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(message, param=param, code=code), headers


def response_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def envelope(rid: str, kind: str, model: str, choices: list[dict], usage: dict | None = None) -> dict:
    body = {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
