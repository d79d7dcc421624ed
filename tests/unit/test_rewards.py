"""Built-in rewards on the built-in tasks' own rows, and the registry's names, imports and errors."""

import pytest

from rayalign.config import RewardFnConfig
from rayalign.data.tasks import generate, to_row
from rayalign.errors import ConfigError
from rayalign.rewards import builtin as R
from rayalign.rewards.registry import WeightedReward, resolve


@pytest.mark.parametrize("task", ["letter_count", "arithmetic", "countdown"])
def test_task_rewards_score_solutions_1_and_wrong_answers_0(task):
    fn = R.BUILTINS[task]
    for i, ex in enumerate(generate(task, 50, 7)):
        meta = {k: v for k, v in to_row(ex, "prompt").items() if k != "prompt"}
        assert fn(ex.prompt, ex.solution, **meta) == 1.0, ex
        assert fn(ex.prompt, ex.wrong, **meta) == 0.0, ex
        assert R.boxed_answer(ex.prompt, ex.solution, **meta) == 1.0


def test_boxed_parsing():
    assert R.last_boxed("a \\boxed{1} then \\boxed{(2+3)*4}") == "(2+3)*4"
    assert R.last_boxed("\\boxed{ {x} }") == "{x}" and R.last_boxed("\\boxed{open") is None
    assert R.boxed_answer("", "so \\boxed{ 3 }", answer=3) == 1.0
    assert R.letter_count("", "\\boxed{three}", word="berry", letter="r") == 0.0
    assert R.countdown("", "\\boxed{3*3}", numbers=[3], target=9) == 0.0  # 3 used twice


def test_count_trace_credits_the_steps_before_the_first_slip():
    word = "berry"
    assert R.count_trace("", "b0 e0 r1 r2 y2 \\boxed{2}", word=word, letter="r") == 1.0
    assert R.count_trace("", "b0 e0 r1 r1 y1 \\boxed{1}", word=word, letter="r") == 0.6  # 4th step miscounted
    assert R.count_trace("", "b0 a0 r1 r2 y2 \\boxed{2}", word=word, letter="r") == 0.2  # misspelled 2nd letter
    assert R.count_trace("", "b0 e0 r1 r2 y2 y2 y2 \\boxed{2}", word=word, letter="r") == 5 / 7  # too long
    assert R.count_trace("", "\\boxed{2}", word=word, letter="r") == 0.0
    for ex in generate("letter_count", 30, 3):  # the task's own solutions score 1, its near misses less
        assert R.count_trace("", ex.solution, **ex.metadata) == 1.0
        assert R.count_trace("", ex.wrong, **ex.metadata) < 1.0


def test_format_and_penalties():
    assert R.think_answer_format("", "<think>hm</think>\n<answer>2</answer>") == 1.0
    assert R.think_answer_format("", "<answer>2</answer>") == 0.0
    assert R.format_regex("", "x \\boxed{2}") == 1.0 and R.format_regex("", "x 2") == 0.0
    assert R.format_regex("", "x \\boxed{2}", pattern=r"\\boxed\{\d\}", full=True) == 0.0
    assert R.length_penalty("", "a" * 150, max_chars=100) == pytest.approx(-0.5)
    assert R.length_penalty("", "a" * 90, max_chars=100) == 0.0 and R.length_penalty("", "a" * 500, max_chars=100) == -1.0
    # 6 words, 4 trigrams: (a b c), (b c a), (c a b), (a b c) -> 3 unique of 4
    assert R.repetition_penalty("", "a b c a b c") == pytest.approx(-0.25)


def test_registry_weights_kwargs_and_imports():
    reward = WeightedReward([RewardFnConfig(name="boxed_answer", weight=1.0),
                             RewardFnConfig(name="length_penalty", weight=0.5, kwargs={"max_chars": 10}),
                             RewardFnConfig(name="rayalign.rewards.builtin:format_regex", weight=0.1)])
    total, parts = reward("q", "answer is \\boxed{4}", answer="4")
    assert parts == {"boxed_answer": 1.0, "length_penalty": -0.9, "rayalign.rewards.builtin:format_regex": 1.0}
    assert total == pytest.approx(1.0 - 0.45 + 0.1)
    assert resolve("rayalign.rewards.builtin:countdown") is R.countdown


def test_registry_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"reward.functions\[1\].name: unknown reward 'boxed' \(built-ins: "):
        WeightedReward([RewardFnConfig(name="letter_count"), RewardFnConfig(name="boxed")])
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        resolve("no_such_module:f")
    with pytest.raises(ConfigError, match="'rayalign.rewards.builtin' has no function 'nope'"):
        resolve("rayalign.rewards.builtin:nope")
