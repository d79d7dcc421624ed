"""``rayalign infer``: batch inference over Ray workers, or a chat loop in the terminal.

Batch (``--input prompts.jsonl --output out.jsonl``): rows with ``prompt`` (text or messages) or
``messages`` (a conversation to continue; a trailing assistant turn is dropped) go in chunks to
``infer.num_workers`` rollout workers (the RL rollout actor class, one engine each); each output row is
the input row plus ``response`` (``responses`` when ``infer.n`` > 1), ``finish_reason`` and
``completion_tokens``, in input order. Prompt j samples with ``seed + j * n`` however many workers run.
With a vision-language model, messages may hold image parts (``{"type": "image", "image": PATH | URL |
base64}``, as in ``vl_prompt`` rows; paths relative to the input file): they are read and checked here, each
bad one named with its line, before any worker starts.

Interactive (``--interactive``): one engine in this process; the conversation is kept, ``/reset`` starts
over, ``/exit`` or Ctrl-D leaves. The reply is printed as it streams from the engine.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from rayalign.config import InferConfig, ModelConfig, RolloutConfig
from rayalign.data.collate import tokenize_prompt
from rayalign.data.sources import iter_dicts
from rayalign.data import images as image_refs
from rayalign.data.vl_tokenize import prompt_ids
from rayalign.engines.base import Completion, ImagePrompt, SamplingSpec
from rayalign.errors import DataError, RunError
from rayalign.models.loading import load_tokenizer
from rayalign.models.vlm import is_vlm, load_processor
from rayalign.outputs import staged


def spec(cfg: InferConfig, n: int = 1) -> SamplingSpec:
    return SamplingSpec(n=n, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                        seed=cfg.seed)


def conversation(row: dict, where: str, system: str | None) -> list[dict] | str:
    if "prompt" in row:
        prompt = row["prompt"]
    elif isinstance(row.get("messages"), list):
        prompt = row["messages"][:-1] if row["messages"] and row["messages"][-1].get("role") == "assistant" \
            else row["messages"]
    else:
        raise DataError(f"{where}: a row needs 'prompt' (text or messages) or 'messages'")
    if isinstance(prompt, str):
        return prompt if system is None else [{"role": "system", "content": system},
                                              {"role": "user", "content": prompt}]
    return ([{"role": "system", "content": system}] if system else []) + prompt


def batch(model: ModelConfig, cfg: InferConfig, source: Path, target: Path, echo: Callable[[str], None]) -> None:
    from rayalign import local_ray
    from rayalign.workers.group import spawn
    from rayalign.workers.rollout import RolloutFailed, RolloutWorker, dispatch, stop

    processor = load_processor(model) if is_vlm(model) else None
    tokenizer = processor or load_tokenizer(model)
    rows, prompts = [], []
    for where, row in iter_dicts(str(source)):
        rows.append(row)
        prompts.append(_prompt(tokenizer, conversation(row, where, cfg.system_prompt), cfg, where, source.parent))
    local_ray.ensure(log_to_driver=False)
    engine = RolloutConfig.model_validate({k: v for k, v in cfg.model_dump().items() if k in RolloutConfig.model_fields})
    workers = spawn(RolloutWorker, cfg.num_workers, role="infer worker", num_cpus=cfg.num_cpus,
                    num_gpus=cfg.num_gpus, args=(model, engine, cfg.max_model_len, cfg.seed), timeout_s=600)
    results: list[list[Completion]] = [[] for _ in rows]
    try:
        with tqdm(total=len(rows), desc="generating", unit="prompt") as bar:
            for start, groups in dispatch(workers, prompts, spec(cfg, cfg.n), cfg.chunk_size, "infer worker"):
                results[start:start + len(groups)] = groups
                bar.update(len(groups))
    except RolloutFailed as exc:
        raise RunError(f"{exc}; nothing was written to {target}") from None
    finally:
        stop(workers)
    with staged(target) as tmp, tmp.open("w") as f:
        for row, group in zip(rows, results):
            f.write(json.dumps({**row, **output_fields(group, cfg.n)}) + "\n")
    tokens = sum(len(c.token_ids) for group in results for c in group)
    echo(f"{len(rows)} prompts, {tokens} completion tokens; wrote {target}")


def _prompt(tokenizer, messages: list[dict] | str, cfg: InferConfig, where: str, base: Path):
    """A row's prompt as token ids; with image parts (``tokenizer`` is then a processor), an ``ImagePrompt``."""
    room = cfg.max_model_len - cfg.max_new_tokens
    parts = [] if isinstance(messages, str) else [
        (f"messages[{i}].content[{j}]", p) for i, m in enumerate(messages) if isinstance(m.get("content"), list)
        for j, p in enumerate(m["content"]) if isinstance(p, dict) and p.get("type") == "image"]
    if not parts and not hasattr(tokenizer, "image_processor"):
        return tokenize_prompt(tokenizer, messages, room)
    if parts and not hasattr(tokenizer, "image_processor"):
        raise DataError(f"{where}: {parts[0][0]} is an image; the model takes text only")
    for field, part in parts:
        bad = image_refs.problem(part.get("image"), base)
        if bad:
            raise DataError(f"{where}: {field}.image {bad}")
    images = [image_refs.open_image(part["image"], base) for _, part in parts]
    ids, template = prompt_ids(tokenizer, [{"role": "user", "content": messages}] if isinstance(messages, str)
                               else messages, images)
    if len(ids) > room:
        raise DataError(f"{where}: the prompt is {len(ids)} tokens with its image tokens, over infer.max_model_len "
                        f"- infer.max_new_tokens = {room}")
    return ImagePrompt(ids, tuple(images), template) if images else ids


def output_fields(group: list[Completion], n: int) -> dict[str, Any]:
    if n == 1:
        c = group[0]
        return {"response": c.text, "finish_reason": c.finish_reason, "completion_tokens": len(c.token_ids)}
    return {"responses": [c.text for c in group], "finish_reason": [c.finish_reason for c in group],
            "completion_tokens": [len(c.token_ids) for c in group]}


def interactive(model: ModelConfig, cfg: InferConfig, read: Callable[[str], str],
                write: Callable[[str], None]) -> None:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # vLLM's log lines would interleave with the chat
    from rayalign.engines.build import build_engine

    tokenizer = load_tokenizer(model)
    engine = build_engine(cfg.engine, model, max_model_len=cfg.max_model_len,
                          gpu_memory_utilization=cfg.gpu_memory_utilization, kv_cache_gib=cfg.kv_cache_gib,
                          streaming=True)
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    history: list[dict] = list(system)
    write(f"chatting with {model.name_or_path}; /reset starts over, /exit leaves\n")
    try:
        while True:
            try:
                line = read("you> ").strip()
            except EOFError:
                break
            if line == "/exit":
                break
            if line == "/reset":
                history = list(system)
                write("(conversation reset)\n")
                continue
            if not line:
                continue
            history.append({"role": "user", "content": line})
            prompt = tokenize_prompt(tokenizer, history, cfg.max_model_len - cfg.max_new_tokens)
            write("assistant> ")
            reply = asyncio.run(_stream(engine, prompt, spec(cfg), write))
            write("\n")
            history.append({"role": "assistant", "content": reply})
    finally:
        engine.close()


async def _stream(engine, prompt: list[int], sampling: SamplingSpec, write: Callable[[str], None]) -> str:
    text = ""
    async for piece in engine.stream(prompt, sampling):
        write(piece.text)
        text += piece.text
    return text
