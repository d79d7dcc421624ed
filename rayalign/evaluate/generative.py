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
from rayalign.data.tasks import generate
from rayalign.engines.base import Completion, GenerationEngine, SamplingSpec
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


def verifiable(engine: GenerationEngine, tokenizer: PreTrainedTokenizerBase, task: EvalTaskConfig,
               temperature: float) -> dict[str, Any]:
    """A built-in task's held-out examples, checked by the task's reward function: accuracy beside the
    score of the best constant answer (an accuracy a constant reaches is not learning), accuracy per
    answer value, the share of answers in the \\boxed{} format, answer length, and optionally the
    accuracy of ``task.sampled`` answers per prompt sampled at temperature 1."""
    assert task.task is not None
    try:
        examples = generate(task.task, task.num_samples, task.seed, task.split)
    except KeyError as exc:
        raise UserError(f"tasks.{task.name}.task: {exc.args[0]}") from None
    prompts = [ex.prompt for ex in examples]
    check = BUILTINS[task.task]
    groups = completions(engine, tokenizer, prompts, task.max_new_tokens, temperature)
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
        sampled = completions(engine, tokenizer, prompts, task.max_new_tokens, 1.0, n=task.sampled)
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
