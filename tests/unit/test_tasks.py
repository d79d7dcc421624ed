"""Built-in task generators: seeded, correct answers, every format validates."""

import re

import pytest

from rayalign.data.formats import check_row
from rayalign.data.tasks import TASKS, eval_arithmetic, generate, to_row


@pytest.mark.parametrize("task", list(TASKS))
def test_seeded_and_varied(task):
    assert generate(task, 20, seed=7) == generate(task, 20, seed=7)
    assert generate(task, 20, seed=7) != generate(task, 20, seed=8)
    assert len({ex.prompt for ex in generate(task, 50)}) > 30


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("fmt", ["sft", "prompt", "preference", "kto", "text"])
def test_every_format_validates(task, fmt):
    for i, ex in enumerate(generate(task, 10)):
        assert check_row(to_row(ex, fmt, i), fmt) == []


def test_letter_count_answers():
    for ex in generate("letter_count", 300):
        letter, word = re.fullmatch(r"How many '(.)' in '([a-z]+)'\?", ex.prompt).groups()
        assert int(ex.answer) == sum(ch == letter for ch in word)
        assert ex.solution.endswith("\\boxed{" + ex.answer + "}")
        assert ex.wrong != ex.solution


def test_arithmetic_answers():
    for ex in generate("arithmetic", 300):
        a, op, b = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", ex.prompt).groups()
        a, b = int(a), int(b)
        assert int(ex.answer) == {"+": a + b, "-": a - b, "*": a * b}[op]


def test_countdown_answers_use_each_number_once_and_hit_the_target():
    for ex in generate("countdown", 200):
        numbers = sorted(ex.metadata["numbers"])
        assert sorted(int(n) for n in re.findall(r"\d+", ex.answer)) == numbers
        assert eval_arithmetic(ex.answer) == ex.metadata["target"] > 0
        wrong = re.search(r"\\boxed\{(.*)\}", ex.wrong).group(1)
        assert eval_arithmetic(wrong) != ex.metadata["target"]


def test_prompt_rows_carry_metadata_for_rewards():
    row = to_row(generate("letter_count", 1)[0], "prompt")
    assert set(row) == {"prompt", "answer", "task", "word", "letter"}
    assert row["task"] == "letter_count"


def test_eval_arithmetic_is_safe():
    assert eval_arithmetic("(3+5)*7 - -2") == 58
    for bad in ("__import__('os').system('true')", "2**10", "7/2", "x+1", "1+"):
        with pytest.raises(ValueError):
            eval_arithmetic(bad)
