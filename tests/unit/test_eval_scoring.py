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
        return [[Completion(token_ids=[], text=ex.solution if i % 2 == 0 else ex.wrong)]
                for i, ex in enumerate(self.examples[:len(prompts)])]


@pytest.mark.parametrize("task", ["letter_count", "arithmetic", "countdown"])
def test_accuracy_uses_the_tasks_checker(task, tiny_tokenizer):
    cfg = EvalTaskConfig(name="t", kind="generate", task=task, num_samples=10, seed=5)
    engine = Scripted(generate(task, 10, 5))
    assert verifiable(engine, tiny_tokenizer, cfg, 0.0) == {"accuracy": 0.5, "n": 10}


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
    assert table(a).splitlines()[2:] == ["mc                       accuracy           0.2500",
                                         "mc                       n                      40"]
    rows = compare(a, b).splitlines()
    assert rows[:2] == ["A: m1", "B: m2"]
    assert rows[3].split() == ["mc", "accuracy", "0.2500", "0.5000", "0.2500"]
    assert rows[4].split() == ["mc", "n", "40", "40", "0"]
