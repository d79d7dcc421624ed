"""Built-in verifiable tasks with seeds: data for examples and tests without downloads.

- ``letter_count``  "How many 'r' in 'strawberry'?" -> ``s0 t0 r1 ... y3 \\boxed{3}`` (the GRPO laptop-quickstart
                    task, answered with a running count; counts 0-3 evenly; held-out words for ``split="test"``)
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


def _split_words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    words = list(WORDS)
    random.Random(0).shuffle(words)
    return tuple(words[len(words) // 5:]), tuple(words[:len(words) // 5])


# letter_count's real words: a fifth are held out, so a test score measures counting, not memory
TRAIN_WORDS, HELD_OUT_WORDS = _split_words()
MAX_COUNT = 3  # counts are drawn evenly from 0..MAX_COUNT, so no constant answer scores above ~1/4
PSEUDO_WORD_SHARE = 0.5  # training rows on random letter strings: the model must read, not recall


def _real_word(rng: random.Random, words: tuple[str, ...], count: int) -> tuple[str, str]:
    while True:
        word = rng.choice(words)
        letters = sorted(set(LETTERS) - set(word)) if count == 0 else sorted(
            {ch for ch in word if word.count(ch) == count})
        if letters:
            return word, rng.choice(letters)


def _pseudo_word(rng: random.Random, count: int) -> tuple[str, str]:
    letter = rng.choice(LETTERS)
    others = [ch for ch in LETTERS if ch != letter]
    chars = [rng.choice(others) for _ in range(rng.randint(max(4, count), 12) - count)]
    for _ in range(count):
        chars.insert(rng.randint(0, len(chars)), letter)
    return "".join(chars), letter


def count_trace(word: str, letter: str, slip: int | None = None) -> str:
    """The worked answer: each letter with the running count, then the count boxed:
    ``s0 t0 r1 a1 w1 b1 e1 r2 r3 y3 \\boxed{3}``. ``slip`` miscounts one position (a wrong answer)."""
    run, parts = 0, []
    for i, ch in enumerate(word):
        run += (ch == letter) != (i == slip)
        parts.append(f"{ch}{run}")
    return " ".join(parts) + " " + boxed(str(run))


def letter_count(rng: random.Random, split: str = "train", index: int = 0) -> Example:
    """Counts 0..MAX_COUNT evenly. ``train``: drawn at random, on training words or (half the time) random
    letter strings; ``test``: the held-out words only, counts in turn (every count equally often)."""
    if split == "test":
        count = index % (MAX_COUNT + 1)
        word, letter = _real_word(rng, HELD_OUT_WORDS, count)
    else:
        count = rng.randint(0, MAX_COUNT)
        word, letter = (_pseudo_word(rng, count) if rng.random() < PSEUDO_WORD_SHARE
                        else _real_word(rng, TRAIN_WORDS, count))
    wrong = count_trace(word, letter, slip=rng.randrange(len(word)))
    return Example(
        task="letter_count",
        prompt=f"How many '{letter}' in '{word}'?",
        answer=str(count),
        solution=count_trace(word, letter),
        wrong=wrong,
        metadata={"word": word, "letter": letter},
    )


def arithmetic(rng: random.Random, split: str = "train", index: int = 0) -> Example:
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


def countdown(rng: random.Random, split: str = "train", index: int = 0) -> Example:
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


# each task: (rng, split, index in the set) -> Example
TASKS: dict[str, Callable[[random.Random, str, int], Example]] = {
    "letter_count": letter_count,
    "arithmetic": arithmetic,
    "countdown": countdown,
}


SPLITS = ("train", "test")


def generate(task: str, n: int, seed: int = 0, split: str = "train") -> list[Example]:
    """``n`` examples of ``task``, the same for the same seed. ``split="test"`` draws from what training
    never sees where the task has such a set (letter_count: held-out words); other tasks differ by seed."""
    if task not in TASKS:
        raise KeyError(f"unknown task '{task}' (known: {', '.join(TASKS)})")
    if split not in SPLITS:
        raise KeyError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    rng = random.Random(f"{task}:{seed}" + ("" if split == "train" else f":{split}"))
    return [TASKS[task](rng, split, i) for i in range(n)]


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
