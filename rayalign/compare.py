"""``rayalign compare``: several models answer the same prompts, side by side, each answer with its reward.

    rayalign compare --models sft=outputs/quickstart/sft/final grpo=outputs/quickstart/grpo/final --task letter_count
    rayalign compare --models A B --prompts my_prompts.jsonl --output side_by_side.jsonl
    rayalign compare --models A B --interactive

Prompts come from a JSONL file (``prompt`` rows; their other fields, e.g. ``answer``, reach the reward
functions), a built-in task's held-out examples, or the terminal (``--interactive``: each typed prompt goes
to every model). Each model runs in its own engine (``--engine vllm|hf``), greedy unless ``--temperature``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rayalign.config import ModelConfig, RewardFnConfig
from rayalign.data.sources import iter_dicts
from rayalign.data.tasks import generate, to_row
from rayalign.engines.base import GenerationEngine, SamplingSpec
from rayalign.errors import DataError, UserError
from rayalign.evaluate.generative import prompt_ids
from rayalign.outputs import write_text
from rayalign.rewards.registry import WeightedReward


@dataclass
class Contender:
    label: str
    path: str
    engine: GenerationEngine


def parse_models(specs: list[str]) -> list[tuple[str, str]]:
    """``label=path`` or ``path`` (labelled by its last directory names, e.g. ``grpo/final``)."""
    if len(specs) < 2:
        raise UserError("--models: give two or more models to compare")
    pairs = []
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep:
            path, label = spec, "/".join(Path(spec).parts[-2:])
        pairs.append((label, path))
    if len({label for label, _ in pairs}) < len(pairs):
        raise UserError("--models: two models share a label; name them label=path")
    return pairs


def load_prompts(prompts: Path | None, task: str | None, n: int, seed: int) -> list[dict]:
    """Prompt rows: the file's first ``n``, or ``n`` held-out examples of a built-in task."""
    if prompts is not None:
        rows = []
        for where, row in itertools.islice(iter_dicts(str(prompts)), n):
            if "prompt" not in row:
                raise DataError(f"{where}: field 'prompt' is missing")
            rows.append(row)
        return rows
    try:
        return [to_row(ex, "prompt") for ex in generate(task or "letter_count", n, seed, "test")]
    except KeyError as exc:
        raise UserError(f"--task: {exc.args[0]}") from None


def open_models(pairs: list[tuple[str, str]], engine: str, max_model_len: int) -> list[Contender]:
    from rayalign.engines.build import build_engine

    opened: list[Contender] = []
    try:
        for label, path in pairs:
            opened.append(Contender(label, path, build_engine(engine, ModelConfig(name_or_path=path),
                                                              max_model_len=max_model_len)))
    except BaseException:
        close(opened)
        raise
    return opened


def close(contenders: list[Contender]) -> None:
    for c in contenders:
        c.engine.close()


def side_by_side(contenders: list[Contender], rows: list[dict], spec: SamplingSpec,
                 reward: WeightedReward | None) -> list[dict]:
    """One record per prompt: each model's answer and (when there are reward functions) its reward."""
    records: list[dict[str, Any]] = [{"prompt": row["prompt"], "answers": {}} for row in rows]
    for c in contenders:
        ids = prompt_ids(c.engine, c.engine.tokenizer, [row["prompt"] for row in rows], spec.max_new_tokens)
        for record, row, group in zip(records, rows, c.engine.generate(ids, spec)):
            text = group[0].text
            meta = {k: v for k, v in row.items() if k != "prompt"}
            record["answers"][c.label] = {"text": text, "reward": reward(row["prompt"], text, **meta)[0]
                                          if reward else None}
    return records


def render(records: list[dict], rows: list[dict] | None = None) -> str:
    """Prompt by prompt, one line per model: label, reward, answer; then each model's mean reward."""
    labels = list(records[0]["answers"]) if records else []
    width = max(map(len, labels), default=5)
    lines = []
    for i, record in enumerate(records):
        prompt = record["prompt"] if isinstance(record["prompt"], str) else record["prompt"][-1]["content"]
        expected = f"   (answer: {rows[i]['answer']})" if rows and "answer" in rows[i] else ""
        lines.append(f"[{i + 1}] {prompt}{expected}")
        for label, answer in record["answers"].items():
            score = "  -  " if answer["reward"] is None else f"{answer['reward']:5.2f}"
            lines.append(f"  {label:<{width}} {score}  {answer['text'].strip()}")
    scored = [label for label in labels if records[0]["answers"][label]["reward"] is not None]
    if scored:
        means = ", ".join(f"{label} {sum(r['answers'][label]['reward'] for r in records) / len(records):.2f}"
                          for label in scored)
        lines.append(f"mean reward over {len(records)} prompts: {means}")
    return "\n".join(lines)


def fixed(contenders: list[Contender], rows: list[dict], spec: SamplingSpec, reward: WeightedReward | None,
          output: Path | None, echo: Callable[[str], None]) -> list[dict]:
    records = side_by_side(contenders, rows, spec, reward)
    if output is not None:
        write_text(output, "".join(json.dumps(r) + "\n" for r in records))
    echo(render(records, rows))
    if output is not None:
        echo(f"wrote {output}")
    return records


def interactive(contenders: list[Contender], spec: SamplingSpec, read: Callable[[str], str],
                echo: Callable[[str], None]) -> None:
    echo(f"each prompt goes to {', '.join(c.label for c in contenders)}; /exit or Ctrl-D leaves")
    while True:
        try:
            line = read("prompt> ").strip()
        except EOFError:
            break
        if line == "/exit":
            break
        if line:
            echo(render(side_by_side(contenders, [{"prompt": line}], spec, None)))


def reward_for(names: list[str]) -> WeightedReward | None:
    return WeightedReward([RewardFnConfig(name=n) for n in names]) if names else None
