"""A deterministic stub judge behind a real OpenAI-compatible HTTP endpoint (FastAPI + uvicorn).

Used only where a real tiny model cannot produce a judge's verdict format: a random 2-layer model never
writes "Rating: [[N]]". At temperature 0 it answers without a verdict (so the judge must retry); at any
other temperature it answers "Rating: [[N]]" with N = (number of words in the response) % 10 + 1, a
value the test can compute by hand. Pairwise prompts get "[[A]]", "[[B]]" or "[[C]]" at once: the answer
with more words wins, equal counts tie. Every request is recorded.
"""

from __future__ import annotations

import re
import threading
import time

import uvicorn
from fastapi import FastAPI

REQUESTS: list[dict] = []
app = FastAPI()


def expected_score(response: str) -> float:
    return float(len(response.split()) % 10 + 1)


@app.post("/v1/chat/completions")
async def chat(body: dict) -> dict:
    REQUESTS.append(body)
    prompt = body["messages"][-1]["content"]
    pair = re.search(r"\[Response A\]\n(.*)\n\n\[Response B\]\n(.*)\Z", prompt, re.S)
    if pair:
        a, b = (len(x.split()) for x in pair.groups())
        text = "[[A]]" if a > b else "[[B]]" if b > a else "[[C]]"
    elif body.get("temperature", 1) == 0:
        text = "The response seems reasonable."
    else:
        response = re.search(r"\[Assistant response\]\n(.*)\Z", prompt, re.S).group(1)
        text = f"Fine.\nRating: [[{expected_score(response):g}]]"
    return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def start(port: int) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server
