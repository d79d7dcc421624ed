"""Evaluation arithmetic without models: accuracy from the task's own checker (a scripted engine answers
half the examples right), the MC file checks, the results table and the side-by-side comparison."""

import json

import pytest

from rayalign.config import EvalTaskConfig
from rayalign.data.tasks import generate
from rayalign.engines.base import Completion
from rayalign.errors import DataError
from rayalign.evaluate.generative import verifiable
from rayalign.evaluate.loglik import BUILTIN_MC, read_mc
from rayalign.evaluate.run import compare, table


class Scripted:
    """Answers example i with its solution when i is even, else with the near miss."""
    max_model_len = 512

    def __init__(self, examples):
        self.examples = examples

    def generate(self, prompts, spec):
        return [[Completion(token_ids=[1] * (i + 1), text=ex.solution if i % 2 == 0 else ex.wrong)] * spec.n
                for i, ex in enumerate(self.examples[:len(prompts)])]


@pytest.mark.parametrize("task", ["letter_count", "arithmetic", "countdown"])
def test_accuracy_uses_the_tasks_checker(task, tiny_tokenizer):
    cfg = EvalTaskConfig(name="t", kind="generate", task=task, num_samples=10, seed=5, sampled=3)
    engine = Scripted(generate(task, 10, 5, "test"))
    out = verifiable(engine, tiny_tokenizer, cfg, 0.0)
    assert (out["accuracy"], out["sampled_accuracy"], out["n"]) == (0.5, 0.5, 10)
    assert out["format_rate"] == 1.0 and out["mean_answer_tokens"] == 5.5  # 1..10 tokens


def test_best_constant_and_accuracy_per_answer(tiny_tokenizer):
    """Held-out letter counts 0-3: the most common answer's share is the bar, and accuracy per count."""
    examples = generate("letter_count", 12, 7, "test")
    answers = [ex.answer for ex in examples]
    cfg = EvalTaskConfig(name="t", kind="generate", task="letter_count", num_samples=12, seed=7)
    out = verifiable(Scripted(examples), tiny_tokenizer, cfg, 0.0)
    top = max(map(answers.count, answers))
    assert out["best_constant"] == top / 12 == 0.25  # the test split gives every count its turn
    assert answers.count(out["best_constant_answer"]) == top
    for value, acc in out["accuracy_by_answer"].items():  # even positions are answered right
        where = [i for i, a in enumerate(answers) if a == value]
        assert acc == sum(i % 2 == 0 for i in where) / len(where)
    assert set(out["accuracy_by_answer"]) == set(answers) <= {"0", "1", "2", "3"}


def test_builtin_mc_file_and_errors(tmp_path):
    rows = read_mc(BUILTIN_MC, 1000)
    assert len(rows) == 40 and all(r["choices"][r["answer"]] for r in rows)
    bad = tmp_path / "mc.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": "q", "choices": ["a"], '
                   '"answer": 0}\n')
    with pytest.raises(DataError, match=r"mc.jsonl:2: field 'choices' must be a list of at least 2 strings"):
        read_mc(bad, 10)
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 2}\n')
    with pytest.raises(DataError, match=r"mc.jsonl:1: field 'answer' must be the index of the right choice \(0..1\)"):
        read_mc(bad, 10)


def test_table_and_compare():
    a = {"model": "m1", "tasks": {"mc": {"kind": "multiple_choice", "accuracy": 0.25, "n": 40, "seconds": 1.0}}}
    b = json.loads(json.dumps(a))
    b["model"], b["tasks"]["mc"]["accuracy"] = "m2", 0.5
    assert table(a).splitlines()[2:] == ["mc                       accuracy                 0.2500",
                                         "mc                       n                            40"]
    rows = compare(a, b).splitlines()
    assert rows[:2] == ["A: m1", "B: m2"]
    assert rows[3].split() == ["mc", "accuracy", "0.2500", "0.5000", "0.2500"]
    assert rows[4].split() == ["mc", "n", "40", "40", "0"]


def test_compare_plot_draws_the_shares(tmp_path):
    from PIL import Image

    from rayalign.errors import UserError
    from rayalign.evaluate.run import plot_shares

    a = {"model": "out/sft/final", "tasks": {"lc": {"kind": "generate", "accuracy": 0.4, "best_constant": 0.27,
                                                     "format_rate": 1.0, "accuracy_by_answer": {"0": 1.0},
                                                     "mean_answer_tokens": 30.0, "n": 200}}}
    b = json.loads(json.dumps(a))
    b["model"], b["tasks"]["lc"]["accuracy"] = "out/grpo/final", 0.6
    with Image.open(plot_shares([a, b], tmp_path / "bars.png")) as image:
        assert image.size[0] >= 600
    with pytest.raises(UserError, match="no accuracy"):
        plot_shares([{"model": "m", "tasks": {"ppl": {"perplexity": 3.0}}}], tmp_path / "none.png")
