"""Built-in verifiable tasks with seeds: data for examples and tests without downloads.

- ``letter_count``  "How many 'r' in 'strawberry'?" -> ``\\boxed{3}`` (the GRPO laptop-quickstart task)
- ``arithmetic``    "What is 17 + 25?" -> ``\\boxed{42}`` (small integers, + - *)
- ``countdown``     reach a target with each given number once, + - * -> ``\\boxed{(3+5)*7}``

Each task yields :class:`Example` objects that render into every data format (``to_row``): SFT
conversations, RL prompts (with the answer and task fields as metadata for reward functions),
preference pairs (correct vs. a near-miss), KTO rows and plain pretraining text.
"""

from __future__ import annotations

import ast
import itertools
import operator
import random
from dataclasses import dataclass, field
from typing import Any, Callable

WORDS = (
    "strawberry banana apple cherry orange lemon mango papaya peach grape melon kiwi apricot coconut "
    "raspberry blueberry blackberry pineapple watermelon tomato potato carrot onion garlic pepper "
    "cucumber pumpkin broccoli spinach lettuce cabbage celery radish turnip parsley basil ginger "
    "mississippi tennessee banana alabama connecticut massachusetts minnesota california illinois "
    "committee assessment accommodate occurrence embarrass millennium necessary possession "
    "bookkeeper balloon coffee letter little success address bottle giraffe hippopotamus "
    "elephant alligator kangaroo crocodile flamingo penguin squirrel rabbit turtle dolphin "
    "butterfly caterpillar grasshopper mosquito scorpion octopus jellyfish starfish seahorse "
    "computer keyboard monitor program variable function parameter algorithm database network "
    "internet software hardware terminal compiler debugger iterator generator transformer "
    "reinforcement learning gradient optimizer parallel distributed cluster scheduler "
    "vocabulary dictionary encyclopedia grammar sentence paragraph syllable alphabet "
    "mountain valley river ocean island desert forest meadow volcano glacier canyon "
    "umbrella sunshine rainbow thunder lightning blizzard hurricane tornado weather "
    "chocolate vanilla caramel cinnamon espresso cappuccino marshmallow lollipop pepperoni "
    "spaghetti lasagna ravioli macaroni broccoli zucchini avocado"
).split()
WORDS = tuple(dict.fromkeys(WORDS))  # de-duplicate, keep order
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Example:
    task: str
    prompt: str             # the user turn
    answer: str             # the verifiable answer, as it appears inside \boxed{}
    solution: str           # a correct assistant turn
    wrong: str              # a plausible incorrect assistant turn (for preference data)
    metadata: dict[str, Any] = field(default_factory=dict)


def boxed(text: str) -> str:
    return "\\boxed{" + text + "}"


def letter_count(rng: random.Random) -> Example:
    word = rng.choice(WORDS)
    letter = rng.choice(word) if rng.random() < 0.8 else rng.choice(LETTERS)
    count = word.count(letter)
    wrong = count + rng.choice((-1, 1)) if count > 0 else 1
    return Example(
        task="letter_count",
        prompt=f"How many '{letter}' in '{word}'?",
        answer=str(count),
        solution=f"'{word}' has {count} '{letter}'. {boxed(str(count))}",
        wrong=f"'{word}' has {wrong} '{letter}'. {boxed(str(wrong))}",
        metadata={"word": word, "letter": letter},
    )


def arithmetic(rng: random.Random) -> Example:
    op = rng.choice("+-*")
    a, b = (rng.randint(0, 99), rng.randint(0, 99)) if op != "*" else (rng.randint(0, 12), rng.randint(0, 12))
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    wrong = value + rng.choice((-10, -1, 1, 10))
    return Example(
        task="arithmetic",
        prompt=f"What is {a} {op} {b}?",
        answer=str(value),
        solution=f"{a} {op} {b} = {value}. {boxed(str(value))}",
        wrong=f"{a} {op} {b} = {wrong}. {boxed(str(wrong))}",
        metadata={"a": a, "b": b, "op": op},
    )


def _random_expression(rng: random.Random, numbers: list[int]) -> str:
    """Combine all ``numbers`` (in a shuffled order) with + - * and random parenthesisation."""
    terms = [str(n) for n in rng.sample(numbers, len(numbers))]
    while len(terms) > 1:
        i = rng.randrange(len(terms) - 1)
        op = rng.choice("+-*")
        terms[i: i + 2] = [f"({terms[i]}{op}{terms[i + 1]})"]
    return terms[0] if len(numbers) == 1 else terms[0][1:-1]  # drop the outermost parentheses


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def eval_arithmetic(expr: str) -> int:
    """Value of an integer expression of + - * and parentheses; ValueError for anything else.

    Used on model output (countdown rewards), so it walks the AST instead of calling ``eval``.
    """
    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        raise ValueError(f"not an integer + - * expression: {expr!r}")

    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an expression: {expr!r}") from None
    return walk(tree.body)


def countdown(rng: random.Random) -> Example:
    numbers = [rng.randint(1, 12) for _ in range(rng.choice((3, 4)))]
    expr, target = "", 0
    while target <= 0:  # keep targets positive, as in the Countdown game
        expr = _random_expression(rng, numbers)
        target = eval_arithmetic(expr)
    other = next(e for e in (_random_expression(rng, numbers) for _ in itertools.count())
                 if eval_arithmetic(e) != target)
    listed = ", ".join(map(str, numbers))
    return Example(
        task="countdown",
        prompt=f"Using the numbers [{listed}] each exactly once with + - * and parentheses, make {target}.",
        answer=expr,
        solution=f"{expr} = {target}. {boxed(expr)}",
        wrong=f"{other} = {target}. {boxed(other)}",
        metadata={"numbers": numbers, "target": target},
    )


TASKS: dict[str, Callable[[random.Random], Example]] = {
    "letter_count": letter_count,
    "arithmetic": arithmetic,
    "countdown": countdown,
}


def generate(task: str, n: int, seed: int = 0) -> list[Example]:
    """``n`` examples of ``task``, the same for the same seed."""
    if task not in TASKS:
        raise KeyError(f"unknown task '{task}' (known: {', '.join(TASKS)})")
    rng = random.Random(f"{task}:{seed}")
    return [TASKS[task](rng) for _ in range(n)]


def to_row(ex: Example, fmt: str, index: int = 0) -> dict[str, Any]:
    """Render an example in a data format (see ``rayalign.data.formats``)."""
    user = [{"role": "user", "content": ex.prompt}]
    if fmt == "sft":
        return {"messages": user + [{"role": "assistant", "content": ex.solution}]}
    if fmt == "prompt":
        return {"prompt": user, "answer": ex.answer, "task": ex.task, **ex.metadata}
    if fmt == "preference":
        return {"prompt": user, "chosen": [{"role": "assistant", "content": ex.solution}],
                "rejected": [{"role": "assistant", "content": ex.wrong}]}
    if fmt == "kto":
        good = index % 2 == 0  # alternate desirable / undesirable completions
        return {"prompt": user, "completion": [{"role": "assistant", "content": ex.solution if good else ex.wrong}],
                "label": good}
    if fmt == "text":
        return {"text": f"{ex.prompt} {ex.solution}"}
    raise KeyError(f"unknown format '{fmt}'")
