"""``rayalign evaluate`` on the tiny model: a built-in verifiable task through vLLM, the built-in multiple
choice set and perplexity checked against log-probs computed here with transformers, judge scoring and
a win rate against a baseline (stub judge: see judge_stub.py), results.json and ``--compare``."""

import json
import math
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rayalign.cli import main
from rayalign.data.collate import tokenize_preference, tokenize_prompt
from rayalign.judge.dataset import as_text
from rayalign.data.tasks import generate
from rayalign.evaluate.loglik import BUILTIN_MC, read_mc
from tests.integration import judge_stub


def cli(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def logp(model, context, continuation):
    with torch.no_grad():
        logits = model(torch.tensor([context + continuation])).logits[0, len(context) - 1:-1]
    return torch.log_softmax(logits, -1)[torch.arange(len(continuation)), continuation].sum().item()


def test_evaluate_cli(ray_local, tiny_model_dir, tiny_tokenizer, hf, tmp_path, capsys, stub, tiny_reward_model_dir):
    text = "\n".join(f"{ex.prompt} {ex.solution}" for ex in generate("letter_count", 30, 5))
    (tmp_path / "text.txt").write_text(text)
    (tmp_path / "judge.yaml").write_text(f"base_url: {stub}\nmodel_name: stub\ncache: null\n")
    (tmp_path / "pair.yaml").write_text(f"base_url: {stub}\nmodel_name: stub\ncache: null\ntemplate: pairwise\n")
    model = str(tiny_model_dir)
    (tmp_path / "eval.yaml").write_text(json.dumps({
        "model": {"name_or_path": model}, "engine": "vllm", "max_model_len": 128,
        "output_dir": str(tmp_path / "out"),
        "tasks": [
            {"name": "letters", "kind": "generate", "task": "letter_count", "num_samples": 12, "max_new_tokens": 16},
            {"name": "mc", "kind": "multiple_choice", "num_samples": 10},
            {"name": "ppl", "kind": "perplexity", "path": str(tmp_path / "text.txt")},
            {"name": "judged", "kind": "judge", "task": "arithmetic", "num_samples": 4, "judge": str(tmp_path / "judge.yaml"),
             "max_new_tokens": 8},
            {"name": "vs_self", "kind": "judge", "task": "arithmetic", "num_samples": 4, "max_new_tokens": 8,
             "judge": str(tmp_path / "pair.yaml"), "baseline": {"name_or_path": model}},
            {"name": "rm", "kind": "reward_model", "task": "arithmetic", "num_samples": 4, "max_new_tokens": 8,
             "reward_model": str(tiny_reward_model_dir), "baseline": {"name_or_path": model}},
        ]}))
    judge_stub.REQUESTS.clear()
    code, out, _ = cli(["evaluate", "-c", str(tmp_path / "eval.yaml")], capsys)
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())["tasks"]
    assert "letters                  accuracy" in out and f"wrote {tmp_path}/out/results.json" in out

    assert results["letters"]["n"] == 12 and 0 <= results["letters"]["accuracy"] <= 1

    rows = read_mc(BUILTIN_MC, 10)  # the built-in set, scored here choice by choice
    right = 0
    for row in rows:
        context = tokenize_prompt(tiny_tokenizer, [{"role": "user", "content": row["question"]}], None)
        scores = [logp(hf, context, tiny_tokenizer(c, add_special_tokens=False)["input_ids"]) for c in row["choices"]]
        right += scores.index(max(scores)) == row["answer"]
    assert results["mc"]["accuracy"] == right / 10 and results["mc"]["n"] == 10

    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = [ids[i:i + 128] for i in range(0, len(ids), 128)]
    total = sum(logp(hf, w[:1], w[1:]) for w in windows if len(w) > 1)
    count = sum(len(w) - 1 for w in windows if len(w) > 1)
    assert results["ppl"]["tokens"] == count
    assert results["ppl"]["perplexity"] == pytest.approx(math.exp(-total / count), rel=1e-4)

    answers = [r["messages"][0]["content"].split("[Assistant response]\n", 1)[1]
               for r in judge_stub.REQUESTS if "[Assistant response]" in r["messages"][0]["content"]
               and r["temperature"] > 0]
    assert len(answers) == 4 and results["judged"]["unparsed"] == 0
    assert results["judged"]["judge_score"] == pytest.approx(sum(map(judge_stub.expected_score, answers)) / 4)
    pairwise = [r for r in judge_stub.REQUESTS if "[Response A]" in r["messages"][0]["content"]]
    assert len(pairwise) == 8  # 4 prompts, both orders
    assert results["vs_self"]["win_rate"] == 0.5  # greedy answers of the same model tie

    # the reward model scored the same greedy answers the judge saw, each with its prompt
    prompts = {as_text(ex.prompt): ex.prompt for ex in generate("arithmetic", 4, 1234)}
    seen = [re.search(r"\[User request\]\n(.*)\n\n\[Assistant response\]\n(.*)\Z", r["messages"][0]["content"], re.S)
            for r in judge_stub.REQUESTS if "[Assistant response]" in r["messages"][0]["content"]
            and r["temperature"] > 0]
    classifier = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model_dir).eval()
    direct = []
    for m in seen:
        row = {"prompt": prompts[m.group(1)], "chosen": m.group(2), "rejected": ""}
        p, c = tokenize_preference(tiny_tokenizer, row, 128)["chosen"]
        with torch.no_grad():
            direct.append(classifier(input_ids=torch.tensor([p + c])).logits[0, 0].item())
    assert results["rm"]["n"] == 4 and results["rm"]["reward_score"] == pytest.approx(sum(direct) / 4, abs=1e-5)
    assert results["rm"]["baseline_reward_score"] == results["rm"]["reward_score"] and results["rm"]["win_rate"] == 0.5

    other = json.loads((tmp_path / "out" / "results.json").read_text())
    other["model"], other["tasks"]["mc"]["accuracy"] = "other", results["mc"]["accuracy"] + 0.1
    (tmp_path / "b.json").write_text(json.dumps(other))
    code, out, _ = cli(["evaluate", "--compare", str(tmp_path / "out" / "results.json"), str(tmp_path / "b.json")],
                       capsys)
    assert code == 0 and f"A: {model}\nB: other\n" in out
    line = next(line for line in out.splitlines() if line.startswith("mc") and " accuracy " in line)
    assert line.split()[-1] == "0.1000"


def test_evaluate_errors(tmp_path, capsys):
    (tmp_path / "eval.yaml").write_text("model: {name_or_path: m}\ntasks:\n  - {name: a, kind: generate}\n")
    code, _, err = cli(["evaluate", "-c", str(tmp_path / "eval.yaml")], capsys)
    assert (code, err) == (2, f"error: {tmp_path}/eval.yaml:3: tasks[0].task: required for kind 'generate'\n")
    code, _, err = cli(["evaluate", "--compare", "x.json", "y.json"], capsys)
    assert (code, err) == (2, "error: x.json: results file not found\n")
