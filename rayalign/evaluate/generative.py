"""Evaluations that generate: verifiable tasks (accuracy by the task's own checker, beside the best constant
answer's score) and judge scoring
(a mean verdict, or the win rate against a baseline model with a pairwise judge).

The win rate asks the pairwise judge twice per prompt, with the two answers in both orders, and averages
(MT-Bench's guard against a judge's position bias): win = (v(model as A) + 1 - v(model as B)) / 2.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from typing import Any

from transformers import PreTrainedTokenizerBase

from rayalign.config import EvalTaskConfig
from rayalign.data.collate import tokenize_prompt
from rayalign.data.sources import iter_dicts
from rayalign.data.tasks import TASKS, generate
from rayalign.data.visual_tasks import VISUAL_TASKS, generate_visual, to_vl_row
from rayalign.data.vl_tokenize import prompt_ids as vl_prompt_ids
from rayalign.engines.base import Completion, GenerationEngine, ImagePrompt, SamplingSpec
from rayalign.errors import DataError, UserError
from rayalign.judge.dataset import as_text
from rayalign.judge.judge import Judge, JudgeItem, Verdict
from rayalign.rewards.builtin import BUILTINS, last_boxed

MAX_ANSWERS_BROKEN_DOWN = 12  # accuracy per answer value for tasks with few distinct answers


def prompt_ids(engine: GenerationEngine, tokenizer: PreTrainedTokenizerBase, prompts: list,
               max_new_tokens: int) -> list[list[int]]:
    """Each prompt (text: one user turn, or messages) as chat-template ids that leave room for the answer."""
    room = engine.max_model_len - max_new_tokens
    return [tokenize_prompt(tokenizer, [{"role": "user", "content": p}] if isinstance(p, str) else p, room)
            for p in prompts]


def completions(engine: GenerationEngine, tokenizer: PreTrainedTokenizerBase, prompts: list, max_new_tokens: int,
                temperature: float, n: int = 1) -> list[list[Completion]]:
    return engine.generate(prompt_ids(engine, tokenizer, prompts, max_new_tokens),
                           SamplingSpec(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=0))


def answers(engine: GenerationEngine, tokenizer: PreTrainedTokenizerBase, prompts: list, max_new_tokens: int,
            temperature: float) -> list[str]:
    return [group[0].text for group in completions(engine, tokenizer, prompts, max_new_tokens, temperature)]


def _examples(task: EvalTaskConfig) -> tuple[list, Any]:
    """A built-in task's held-out examples (text or visual) and its checker."""
    assert task.task is not None
    visual = task.task in VISUAL_TASKS
    try:
        examples = (generate_visual if visual else generate)(task.task, task.num_samples, task.seed, task.split)
    except KeyError as exc:
        known = ", ".join([*TASKS, *VISUAL_TASKS])
        raise UserError(f"tasks.{task.name}.task: {exc.args[0]}" + ("" if "split" in exc.args[0] else
                                                                      f"; built-in tasks: {known}")) from None
    return examples, BUILTINS["boxed_answer" if visual else task.task]


def _task_prompts(engine: GenerationEngine, tokenizer, task: EvalTaskConfig, examples: list) -> list:
    """Each example's prompt as the engine takes it: ids, or ids with the image for a visual task (``tokenizer``
    is then the model's processor)."""
    if task.task not in VISUAL_TASKS:
        return prompt_ids(engine, tokenizer, [ex.prompt for ex in examples], task.max_new_tokens)
    if not hasattr(tokenizer, "image_processor"):
        raise UserError(f"tasks.{task.name}.task: {task.task} is a visual task; the model under evaluation takes "
                        "text only")
    prompts = [ImagePrompt(*pair[:1], (ex.image,), pair[1]) for ex in examples for pair in
               [vl_prompt_ids(tokenizer, to_vl_row(ex, "vl_prompt", "image")["prompt"], [ex.image])]]
    room = engine.max_model_len - task.max_new_tokens
    if any(len(p.token_ids) > room for p in prompts):
        raise UserError(f"tasks.{task.name}: a prompt with its image tokens is longer than max_model_len "
                        f"{engine.max_model_len} - max_new_tokens {task.max_new_tokens}")
    return prompts


def verifiable(engine: GenerationEngine, tokenizer: PreTrainedTokenizerBase, task: EvalTaskConfig,
               temperature: float) -> dict[str, Any]:
    """A built-in task's held-out examples, checked by the task's reward function (a visual task's: its boxed
    answer): accuracy beside the score of the best constant answer (an accuracy a constant reaches is not
    learning), accuracy per answer value, the share of answers in the \\boxed{} format, answer length, and
    optionally the accuracy of ``task.sampled`` answers per prompt sampled at temperature 1."""
    examples, check = _examples(task)
    prompts = _task_prompts(engine, tokenizer, task, examples)

    def sample(n: int, temp: float) -> list[list[Completion]]:
        return engine.generate(prompts, SamplingSpec(n=n, temperature=temp, max_new_tokens=task.max_new_tokens,
                                                     seed=0))

    groups = sample(1, temperature)
    right = [check(ex.prompt, g[0].text, answer=ex.answer, **ex.metadata) >= 1.0 for ex, g in zip(examples, groups)]
    answers_seen = Counter(ex.answer for ex in examples)
    constant, hits = answers_seen.most_common(1)[0]
    out: dict[str, Any] = {
        "accuracy": sum(right) / len(right), "n": len(right),
        "best_constant": hits / len(examples), "best_constant_answer": constant,
        "format_rate": sum(last_boxed(g[0].text) is not None for g in groups) / len(groups),
        "mean_answer_tokens": statistics.fmean(len(g[0].token_ids) for g in groups),
    }
    if len(answers_seen) <= MAX_ANSWERS_BROKEN_DOWN:
        out["accuracy_by_answer"] = {
            value: sum(r for r, ex in zip(right, examples) if ex.answer == value) / count
            for value, count in sorted(answers_seen.items())}
    if task.sampled:
        sampled = sample(task.sampled, 1.0)
        scores = [check(ex.prompt, c.text, answer=ex.answer, **ex.metadata) >= 1.0
                  for ex, g in zip(examples, sampled) for c in g]
        out["sampled_accuracy"] = sum(scores) / len(scores)
    return out


def judge_prompts(task: EvalTaskConfig) -> list:
    """The prompts to answer and judge: a JSONL file's ``prompt`` fields, or a built-in task's."""
    if task.path is None:
        assert task.task is not None  # config validation: a path or a task
        return [ex.prompt for ex in generate(task.task, task.num_samples, task.seed)]
    prompts = []
    for where, row in itertools.islice(iter_dicts(task.path), task.num_samples):
        if "prompt" not in row:
            raise DataError(f"{where}: field 'prompt' is missing")
        prompts.append(row["prompt"])
    return prompts


def judged(judge: Judge, prompts: list, replies: list[str], baseline: list[str] | None) -> dict[str, float]:
    texts = [as_text(p) for p in prompts]
    if baseline is None:
        if judge.parser == "pairwise":
            raise UserError(f"a pairwise judge ({judge.cfg.template}) needs tasks[].baseline to compare with")
        verdicts = judge.score([JudgeItem(prompt=t, response=a) for t, a in zip(texts, replies)])
        return {"judge_score": _mean([v.score for v in verdicts]), **_counts(verdicts)}
    if judge.parser != "pairwise":
        raise UserError(f"a win rate against tasks[].baseline needs a pairwise judge, not '{judge.cfg.template}'")
    first = [JudgeItem(prompt=t, response_a=a, response_b=b) for t, a, b in zip(texts, replies, baseline)]
    second = [JudgeItem(prompt=t, response_a=b, response_b=a) for t, a, b in zip(texts, replies, baseline)]
    verdicts = judge.score(first + second)
    wins = [(x.score + 1 - y.score) / 2 for x, y in zip(verdicts[:len(first)], verdicts[len(first):])
            if x.score is not None and y.score is not None]
    return {"win_rate": _mean(wins), **_counts(verdicts)}


def _mean(values: list[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return statistics.fmean(kept) if kept else float("nan")


def _counts(verdicts: list[Verdict]) -> dict[str, float]:
    return {"n": len(verdicts), "unparsed": sum(v.score is None for v in verdicts)}
