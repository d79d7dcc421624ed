"""Load test of the OpenAI-compatible Serve app: C concurrent chat requests through the official async
``openai`` client, counting errors and printing latency percentiles and throughput.

    .venv/bin/python benchmarks/serve_load.py [--requests 64] [--concurrency 64] [--engine vllm]
    .venv/bin/python benchmarks/serve_load.py --url http://HOST:8000/v1 --model NAME   # a running server

Without ``--url`` it makes the tiny model, starts a local Ray and deploys the app (one replica) first.
Each request is a letter-count chat prompt with ``max_tokens`` fixed and sampling at T=1; the whole
batch is sent at once, so with C = requests every request is in flight together. Run by hand; results
go to benchmarks/results/serve_load.json and the README.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


async def load(url: str, model: str, key: str, requests: int, concurrency: int, max_tokens: int) -> dict:
    import openai

    from rayalign.data.tasks import generate

    client = openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)
    prompts = [ex.prompt for ex in generate("letter_count", requests, 0)]

    async def one(prompt: str) -> tuple[float, int] | str:
        async with gate:
            start = time.perf_counter()
            try:
                r = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, seed=1)
            except openai.APIError as exc:
                return f"{type(exc).__name__}: {exc}"
            return time.perf_counter() - start, r.usage.completion_tokens

    start = time.perf_counter()
    results = await asyncio.gather(*(one(p) for p in prompts))
    wall = time.perf_counter() - start
    ok = [r for r in results if not isinstance(r, str)]
    latencies = sorted(r[0] for r in ok)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"requests": requests, "concurrency": concurrency, "max_tokens": max_tokens,
            "errors": len(results) - len(ok), "error_examples": [r for r in results if isinstance(r, str)][:3],
            "p50_s": round(q[49], 3), "p99_s": round(q[98], 3), "max_s": round(latencies[-1], 3),
            "wall_s": round(wall, 3), "completion_tokens": sum(r[1] for r in ok),
            "tokens_per_s": round(sum(r[1] for r in ok) / wall, 1), "requests_per_s": round(len(ok) / wall, 2)}


def deploy_tiny(root: Path, engine: str, port: int) -> tuple[str, str]:
    import ray

    from rayalign.config import ModelConfig, ServeConfig
    from rayalign.models.tiny import create_tiny
    from rayalign.serve.deploy import deploy

    path = create_tiny(root / "model")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cfg = ServeConfig(engine=engine, port=port, num_cpus=1, max_model_len=512, served_model_name="tiny")
    return deploy(ModelConfig(name_or_path=str(path)), cfg), "tiny"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url"), ap.add_argument("--model"), ap.add_argument("--key", default="none")
    ap.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", help="default: benchmarks/results/serve_load_ENGINE.json")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        url, model = (args.url, args.model) if args.url else deploy_tiny(Path(tmp), args.engine, args.port)
        asyncio.run(load(url, model, args.key, 4, 4, args.max_tokens))  # warm-up (vLLM's first batch)
        result = asyncio.run(load(url, model, args.key, args.requests, args.concurrency, args.max_tokens))
    result["engine"] = None if args.url else args.engine
    print(json.dumps(result, indent=2))
    out = Path(args.out or f"benchmarks/results/serve_load_{result['engine'] or 'url'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
