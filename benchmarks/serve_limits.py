"""Does a huge request slow its neighbours? Small chat requests, one after another, timed alone and while
clients keep sending 10 MB chat bodies; first with the default limits (``serve.max_body_bytes`` 8 MB: a 413
before the body is read), then with the limits raised past the body (what every request met before issue
21: the whole prompt tokenized, then a context-length 400).

    .venv/bin/python benchmarks/serve_limits.py [--engine vllm] [--mb 10] [--flooders 2] [--neighbours 20]

It makes the tiny model, starts a local Ray and deploys one replica. Run by hand; results go to
benchmarks/results/serve_limits.json and the README.
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

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMALL = {"model": "tiny", "messages": [{"role": "user", "content": "How many 'r' in 'strawberry'?"}],
         "max_tokens": 8, "temperature": 0}


def summary(latencies: list[float]) -> dict:
    return {"count": len(latencies), "p50_s": round(statistics.median(latencies), 3),
            "max_s": round(max(latencies), 3)} if latencies else {"count": 0}


async def phase(url: str, mb: int, flooders: int, neighbours: int) -> dict:
    """``neighbours`` small requests in turn while ``flooders`` clients send ``mb`` MB bodies in a loop."""
    big = json.dumps({**SMALL, "messages": [{"role": "user", "content": "a " * (mb * 500_000)}]}).encode()
    done, floods = asyncio.Event(), []

    async def flood(c: httpx.AsyncClient) -> None:
        while not done.is_set():
            start = time.perf_counter()
            try:
                r = await c.post(f"{url}/chat/completions", content=big, timeout=300,
                                 headers={"Content-Type": "application/json"})
                floods.append((r.status_code, time.perf_counter() - start))
            except httpx.HTTPError as exc:  # a server may cut an oversized upload short
                floods.append((type(exc).__name__, time.perf_counter() - start))

    async with httpx.AsyncClient() as c:
        tasks = [asyncio.create_task(flood(c)) for _ in range(flooders)]
        if flooders:
            await asyncio.sleep(1)  # the floods are under way
        small = []
        for _ in range(neighbours):
            start = time.perf_counter()
            r = await c.post(f"{url}/chat/completions", json=SMALL, timeout=300)
            assert r.status_code == 200, r.text
            small.append(time.perf_counter() - start)
        done.set()
        await asyncio.gather(*tasks)
    statuses = sorted({str(s) for s, _ in floods})
    return {"neighbours": summary(small), "big_requests": {**summary([t for _, t in floods]), "status": statuses}}


def deploy_tiny(model_dir: str, engine: str, port: int, **limits) -> str:
    from rayalign.config import ModelConfig, ServeConfig
    from rayalign.serve.deploy import deploy

    cfg = ServeConfig(engine=engine, port=port, num_cpus=1, max_model_len=512, served_model_name="tiny", **limits)
    return deploy(ModelConfig(name_or_path=model_dir), cfg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--mb", type=int, default=10)
    ap.add_argument("--flooders", type=int, default=2)
    ap.add_argument("--neighbours", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/serve_limits.json")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import ray

    from rayalign.models.tiny import create_tiny

    results = {"engine": args.engine, "body_mb": args.mb, "flooders": args.flooders}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(create_tiny(Path(tmp) / "model"))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        url = deploy_tiny(model_dir, args.engine, args.port)  # the default limits
        asyncio.run(phase(url, args.mb, 0, 4))  # warm-up
        results["alone"] = asyncio.run(phase(url, args.mb, 0, args.neighbours))
        results["default_limits"] = asyncio.run(phase(url, args.mb, args.flooders, args.neighbours))
        url = deploy_tiny(model_dir, args.engine, args.port, max_body_bytes=4 * args.mb * 1_000_000,
                          max_prompt_chars=4 * args.mb * 1_000_000)  # as before issue 21: no cap reached
        asyncio.run(phase(url, args.mb, 0, 4))
        results["limits_raised"] = asyncio.run(phase(url, args.mb, args.flooders, args.neighbours))
        ray.shutdown()
    print(json.dumps(results, indent=2))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
