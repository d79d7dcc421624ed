"""On-policy preference pairs from ranked samples, the compare command's model labels and rendering, and
the plots' smoothing: pure functions, no models."""

import pytest

from rayalign.compare import parse_models, render
from rayalign.data.pairs import rank_pairs
from rayalign.errors import DataError, UserError
from rayalign.plots import smooth
from rayalign.rewards.builtin import boxed_answer

PROMPT = [{"role": "user", "content": "How many 'r' in 'berry'?"}]


def score(prompt, text, meta):
    return boxed_answer(prompt, text, **meta)


def test_best_against_worst_and_all_same_dropped():
    rows = [("f:1", {"prompt": PROMPT, "answer": "2", "responses": ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}"]}),
            ("f:2", {"prompt": PROMPT, "answer": "2", "responses": ["\\boxed{2}", "\\boxed{2}"]}),
            ("f:3", {"prompt": "plain", "answer": "0", "responses": ["x", "\\boxed{0}"]})]
    pairs, counts = rank_pairs(rows, score)
    assert counts == {"prompts": 3, "pairs": 2, "all_same": 1}
    assert pairs[0] == {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "\\boxed{2}"}],
                        "rejected": [{"role": "assistant", "content": "\\boxed{1}"}],
                        "chosen_reward": 1.0, "rejected_reward": 0.0}
    assert (pairs[1]["chosen"], pairs[1]["rejected"]) == ("\\boxed{0}", "x")  # text prompts keep text answers


def test_rows_without_responses_name_the_line():
    with pytest.raises(DataError, match=r"^f:7: field 'responses'"):
        rank_pairs([("f:7", {"prompt": "p", "response": "one answer"})], score)


def test_model_labels():
    assert parse_models(["out/sft/final", "grpo=out/grpo/final"]) == [("sft/final", "out/sft/final"),
                                                                      ("grpo", "out/grpo/final")]
    with pytest.raises(UserError, match="two or more"):
        parse_models(["a"])
    with pytest.raises(UserError, match="share a label"):
        parse_models(["x=a", "x=b"])


def test_render_lines_up_answers_and_mean_rewards():
    records = [{"prompt": PROMPT, "answers": {"sft": {"text": "\\boxed{1}", "reward": 0.0},
                                              "grpo": {"text": "\\boxed{2} ", "reward": 1.0}}},
               {"prompt": "q2", "answers": {"sft": {"text": "\\boxed{2}", "reward": 1.0},
                                            "grpo": {"text": "\\boxed{2}", "reward": 1.0}}}]
    assert render(records, [{"answer": "2"}, {}]).splitlines() == [
        "[1] How many 'r' in 'berry'?   (answer: 2)",
        "  sft   0.00  \\boxed{1}",
        "  grpo  1.00  \\boxed{2}",
        "[2] q2",
        "  sft   1.00  \\boxed{2}",
        "  grpo  1.00  \\boxed{2}",
        "mean reward over 2 prompts: sft 0.50, grpo 1.00",
    ]


def test_smooth_is_a_trailing_mean():
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
