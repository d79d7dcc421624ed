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


def test_letter_count_trace_counts_step_by_step():
    from rayalign.data.tasks import count_trace

    assert count_trace("strawberry", "r") == "s0 t0 r1 a1 w1 b1 e1 r2 r3 y3 \\boxed{3}"
    assert count_trace("strawberry", "r", slip=0) == "s1 t1 r2 a2 w2 b2 e2 r3 r4 y4 \\boxed{4}"
    assert count_trace("berry", "r", slip=2) == "b0 e0 r0 r1 y1 \\boxed{1}"


def test_letter_count_splits_hold_words_out_and_spread_counts():
    from collections import Counter

    from rayalign.data.tasks import HELD_OUT_WORDS, TRAIN_WORDS, WORDS

    assert len(HELD_OUT_WORDS) == len(WORDS) // 5 and not set(HELD_OUT_WORDS) & set(TRAIN_WORDS)
    train = generate("letter_count", 2000, 1)
    words = [ex.metadata["word"] for ex in train]
    assert not set(words) & set(HELD_OUT_WORDS)
    assert 0.45 < sum(w not in TRAIN_WORDS for w in words) / len(words) < 0.55  # random letter strings
    assert all(400 < k < 600 for k in Counter(ex.answer for ex in train).values())
    test = generate("letter_count", 200, 99, "test")
    assert all(ex.metadata["word"] in HELD_OUT_WORDS for ex in test)
    assert Counter(ex.answer for ex in test) == {"0": 50, "1": 50, "2": 50, "3": 50}  # no constant beats 25%
    assert generate("letter_count", 5, 99, "test") == test[:5] and generate("letter_count", 5, 99) != test[:5]


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
