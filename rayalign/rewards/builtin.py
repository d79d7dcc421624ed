"""Built-in reward functions. Signature: ``fn(prompt, completion, **metadata) -> float``, where metadata is
the prompt row's extra fields (the built-in tasks write ``answer``, ``word``/``letter``, ``a``/``b``/``op``,
``numbers``/``target``). Unknown metadata is ignored, so any function can score any row.

| name | reward |
|---|---|
| boxed_answer | 1 if the last ``\\boxed{...}`` equals the row's ``answer`` (spaces ignored), else 0 |
| letter_count | 1 if the boxed integer is the count of ``letter`` in ``word``, else 0 |
| count_trace | share of ``word``'s letters the running-count trace (``s0 t0 r1 ...``) gets right before its first slip |
| arithmetic | 1 if the boxed integer equals ``a op b``, else 0 |
| countdown | 1 if the boxed expression uses exactly ``numbers`` (each once) with + - * and equals ``target`` |
| format_regex | 1 if ``pattern`` matches the completion (``re.search``; ``full=True``: the whole stripped text) |
| think_answer_format | 1 if the completion is ``<think>...</think>`` then ``<answer>...</answer>`` |
| length_penalty | 0 up to ``max_chars`` characters, then falling linearly to -1 at twice that |
| repetition_penalty | -(share of repeated word ``n``-grams): 0 for no repeats, towards -1 for loops |
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from rayalign.data.tasks import eval_arithmetic


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, braces balanced; None when there is none."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def _boxed_int(completion: str) -> int | None:
    found = last_boxed(completion)
    try:
        return int(found) if found is not None else None
    except ValueError:
        return None


def boxed_answer(prompt: Any, completion: str, answer: Any = None, **_: Any) -> float:
    found = last_boxed(completion)
    if found is None or answer is None:
        return 0.0
    return float(found.replace(" ", "") == str(answer).replace(" ", ""))


def letter_count(prompt: Any, completion: str, word: str = "", letter: str = "", **_: Any) -> float:
    return float(bool(word) and _boxed_int(completion) == word.count(letter))


def count_trace(prompt: Any, completion: str, word: str = "", letter: str = "", **_: Any) -> float:
    """Process reward for letter counting: the trace before ``\\boxed`` must spell ``word`` one letter per
    step with the running count of ``letter``. An answer-only reward lets RL keep right counts reached
    through a wrong spelling, and the spelling, the part that carries to unseen words, then decays."""
    if not word:
        return 0.0
    steps = completion.split("\\boxed")[0].split()
    run, right = 0, 0
    for step, ch in zip(steps, word):
        run += ch == letter
        if step != f"{ch}{run}":
            break
        right += 1
    return right / max(len(word), len(steps))


def arithmetic(prompt: Any, completion: str, a: int = 0, b: int = 0, op: str = "", **_: Any) -> float:
    if op not in ("+", "-", "*"):
        return 0.0
    return float(_boxed_int(completion) == {"+": a + b, "-": a - b, "*": a * b}[op])


def countdown(prompt: Any, completion: str, numbers: list[int] | None = None, target: int | None = None,
              **_: Any) -> float:
    expr = last_boxed(completion)
    if expr is None or numbers is None or target is None:
        return 0.0
    used = [int(n) for n in re.findall(r"\d+", expr)]
    if Counter(used) != Counter(int(n) for n in numbers):
        return 0.0
    try:
        return float(eval_arithmetic(expr) == int(target))
    except ValueError:
        return 0.0


def format_regex(prompt: Any, completion: str, pattern: str = r"\\boxed\{.+\}", full: bool = False,
                 **_: Any) -> float:
    match = re.fullmatch(pattern, completion.strip(), re.DOTALL) if full else re.search(pattern, completion, re.DOTALL)
    return float(match is not None)


_THINK_ANSWER = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)


def think_answer_format(prompt: Any, completion: str, **_: Any) -> float:
    return float(_THINK_ANSWER.fullmatch(completion) is not None)


def length_penalty(prompt: Any, completion: str, max_chars: int = 200, **_: Any) -> float:
    over = len(completion) - max_chars
    return -min(1.0, over / max_chars) if over > 0 else 0.0


def repetition_penalty(prompt: Any, completion: str, n: int = 3, **_: Any) -> float:
    words = completion.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return -(1 - len(set(grams)) / len(grams))


BUILTINS = {fn.__name__: fn for fn in (boxed_answer, letter_count, count_trace, arithmetic, countdown, format_regex,
                                       think_answer_format, length_penalty, repetition_penalty)}
