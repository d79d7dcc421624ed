"""Asking a judge model for verdicts over an OpenAI-compatible API (our Serve app or any other).

Each item is rendered into the judge's prompt and sent as one chat request; up to ``concurrency`` are in
flight at once, so a vLLM judge batches them. An answer the parser cannot read is asked again up to
``max_retries`` times, sampled at ``retry_temperature`` with a new seed each time (asking a greedy judge
the same question again would give the same unreadable answer). Parsed verdicts are cached on disk
(sqlite) under a key of the judge's identity (prompt, parser, model, sampling) and the item, so
re-scoring a dataset or re-running an evaluation only pays for new items. Unparsed answers are not cached.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import openai

from rayalign.config import JudgeConfig
from rayalign.judge.parsers import parse
from rayalign.judge.templates import render, resolve


@dataclass(frozen=True)
class JudgeItem:
    prompt: str
    response: str | None = None       # pairwise: response_a / response_b instead
    reference: str | None = None
    response_a: str | None = None
    response_b: str | None = None


@dataclass
class Verdict:
    score: float | None               # the parsed verdict (score 1..10, yes 1 / no 0, A 1 / B 0 / tie 0.5)
    raw: str = ""                     # the judge's last answer
    attempts: int = 0
    cached: bool = False
    error: str | None = None


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str
    api_key: str | None = None


class VerdictCache:
    def __init__(self, path: str):
        file = Path(path).expanduser()
        file.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(file)
        self.db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, score REAL, raw TEXT)")

    def get(self, key: str) -> Verdict | None:
        row = self.db.execute("SELECT score, raw FROM verdicts WHERE key = ?", (key,)).fetchone()
        return None if row is None else Verdict(score=row[0], raw=row[1], cached=True)

    def put(self, key: str, verdict: Verdict) -> None:
        self.db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?)", (key, verdict.score, verdict.raw))
        self.db.commit()


class Judge:
    def __init__(self, cfg: JudgeConfig, endpoint: Endpoint):
        self.cfg, self.endpoint = cfg, endpoint
        self.template, self.parser = resolve(cfg)
        self.cache = VerdictCache(cfg.cache) if cfg.cache else None
        identity = {"template": self.template, "parser": self.parser, "json_key": cfg.json_key,
                    "model": endpoint.model, "temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
        self.identity = json.dumps(identity, sort_keys=True)

    def key(self, item: JudgeItem) -> str:
        return hashlib.sha256((self.identity + json.dumps(asdict(item), sort_keys=True)).encode()).hexdigest()

    def score(self, items: list[JudgeItem], progress: Callable[[Verdict], None] | None = None) -> list[Verdict]:
        """Verdicts for ``items`` in order (blocking); ``progress`` is called as each one lands."""
        return asyncio.run(self.ascore(items, progress))

    async def ascore(self, items: list[JudgeItem], progress: Callable[[Verdict], None] | None = None
                     ) -> list[Verdict]:
        client = openai.AsyncOpenAI(base_url=self.endpoint.base_url, api_key=self.endpoint.api_key or "none",
                                    timeout=self.cfg.timeout_s)
        gate = asyncio.Semaphore(self.cfg.concurrency)

        async def one(item: JudgeItem) -> Verdict:
            async with gate:
                verdict = await self._verdict(client, item)
            if progress:
                progress(verdict)
            return verdict

        try:
            return await asyncio.gather(*(one(item) for item in items))
        finally:
            await client.close()

    async def _verdict(self, client: openai.AsyncOpenAI, item: JudgeItem) -> Verdict:
        key = self.key(item)
        if self.cache and (hit := self.cache.get(key)):
            return hit
        content = render(self.template, asdict(item))
        verdict = Verdict(score=None)
        for attempt in range(1 + self.cfg.max_retries):
            temperature = self.cfg.temperature if attempt == 0 else self.cfg.retry_temperature
            try:
                reply = await client.chat.completions.create(
                    model=self.endpoint.model, messages=[{"role": "user", "content": content}],
                    temperature=temperature, max_tokens=self.cfg.max_tokens, seed=attempt)
            except openai.APIError as exc:  # the client already retried connection errors and 5xx
                return Verdict(score=None, attempts=attempt + 1, error=f"{type(exc).__name__}: {exc}")
            verdict.raw, verdict.attempts = reply.choices[0].message.content or "", attempt + 1
            verdict.score = parse(self.parser, verdict.raw, self.cfg.json_key)
            if verdict.score is not None:
                if self.cache:
                    self.cache.put(key, verdict)
                return verdict
        verdict.error = f"no {self.parser} verdict in {verdict.attempts} answers"
        return verdict
