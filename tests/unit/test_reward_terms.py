"""Reward models as reward terms, the parts without Ray: running normalisation against hand-computed
moments, a completion scored as the reward model's training pairs were tokenised, term names, and a
causal LM named as a reward model refused before anything starts."""

import pytest
import torch

from rayalign.config import RecipeConfig, RewardModelConfig, cross_field_errors
from rayalign.data.collate import tokenize_preference, tokenize_scored
from rayalign.errors import UserError
from rayalign.rewards.running import RunningMoments
from rayalign.workers.reward_model import term_names


def test_running_moments_equal_the_moments_of_everything_seen():
    batches = [[1.0, 2.0, 4.0], [0.5], [], [3.0, -1.0, 7.0, 2.0]]
    moments, seen = RunningMoments(), []
    for batch in batches:
        out = moments.normalize(batch)
        seen += batch
        if len(seen) > 1:
            every = torch.tensor(seen, dtype=torch.float64)
            assert moments.mean == pytest.approx(every.mean().item())
            assert moments.std == pytest.approx(every.std().item())  # unbiased, as torch.std
            assert out == pytest.approx(((torch.tensor(batch, dtype=torch.float64) - every.mean()) / every.std()).tolist())
    assert moments.count == 8
    assert RunningMoments(**moments.to_dict()) == moments
    assert RunningMoments().normalize([3.0]) == [0.0]  # one value: mean itself, std 1


def test_a_scored_completion_is_tokenised_as_the_reward_models_training_pairs(tiny_tokenizer):
    for prompt in ("Count the r's in 'berry'.", [{"role": "user", "content": "Count the r's in 'berry'."}]):
        row = {"prompt": prompt, "chosen": "There are 2.", "rejected": "1"}
        chosen = tokenize_preference(tiny_tokenizer, row, 64)["chosen"]
        assert tokenize_scored(tiny_tokenizer, prompt, "There are 2.", 64) == chosen[0] + chosen[1]
    flat = tokenize_scored(tiny_tokenizer, "abc", "d", 64)
    assert flat[-1] == tiny_tokenizer.eos_token_id  # a plain-string pair ends with EOS, as in training
    assert len(tokenize_scored(tiny_tokenizer, "word " * 200, "answer", 32)) == 32


def test_term_names():
    assert term_names([RewardModelConfig(path="a")]) == ["reward_model"]
    assert term_names([RewardModelConfig(path="a"), RewardModelConfig(path="b", name="helpful")]) == [
        "reward_model_0", "helpful"]


def _rl(model_dir, reward) -> dict:
    return {"trainer": "grpo", "model": {"name_or_path": str(model_dir)},
            "data": {"train": {"format": "prompt", "datasets": [{"path": "p.jsonl"}], "max_length": 96}},
            "reward": reward, "rollout": {"max_new_tokens": 16}}


def test_reward_models_alone_are_a_reward_and_names_must_differ(tiny_model_dir):
    def errors(reward: dict) -> list:
        return cross_field_errors(RecipeConfig.model_validate(_rl(tiny_model_dir, reward)))

    assert errors({"models": [{"path": "rm"}]}) == []
    assert errors({}) == [(("reward", "functions"),
                           "online RL needs at least one reward function, reward model or reward.judge")]
    assert errors({"functions": [{"name": "boxed_answer"}], "models": [{"path": "rm"}, {"path": "rm",
                                                                                         "name": "boxed_answer"}]}) == [
        (("reward", "models", 1, "name"), "'boxed_answer' names two reward terms")]


def test_a_causal_lm_or_missing_dir_as_reward_model_is_refused_before_anything_starts(tiny_model_dir, tmp_path):
    from rayalign.recipes.grpo import run

    cfg = RecipeConfig.model_validate(_rl(tiny_model_dir, {"models": [{"path": str(tiny_model_dir)}]}))
    with pytest.raises(UserError, match=r"^reward.models\[0\].path: '.*' is not a one-label sequence classifier "
                                        r"\(architectures \['Qwen2ForCausalLM'\].*train one with trainer: reward_model"):
        run(cfg)
    missing = RecipeConfig.model_validate(_rl(tiny_model_dir, {"models": [{"path": str(tmp_path / "rm" / "final")}]}))
    with pytest.raises(UserError, match=r"^reward.models\[0\].path: the local directory '.*final' does not exist"):
        run(missing)


def _direct(model_dir, tokenizer, prompt, completion) -> float:
    from transformers import AutoModelForSequenceClassification

    classifier = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    p, c = tokenize_preference(tokenizer, {"prompt": prompt, "chosen": completion, "rejected": ""}, 64)["chosen"]
    with torch.no_grad():
        return classifier(input_ids=torch.tensor([p + c])).logits[0, 0].item()


def test_score_cli_scores_rows_and_gives_a_pair_accuracy(tiny_reward_model_dir, tiny_tokenizer, tmp_path, capsys):
    import json

    from rayalign.cli import main

    def cli(*args):
        with pytest.raises(SystemExit) as info:
            main(["score", "-m", str(tiny_reward_model_dir), *args, "--max-length", "64"])
        return info.value.code, *capsys.readouterr()

    rows = [{"prompt": "Count the r's in 'berry'.", "chosen": "There are 2.", "rejected": "1"},
            {"prompt": [{"role": "user", "content": "2 + 2?"}], "chosen": "4", "rejected": "5", "id": 7},
            {"prompt": "abc", "chosen": "d", "rejected": "a much longer answer to this"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, _ = cli("-i", str(tmp_path / "pairs.jsonl"), "-o", str(tmp_path / "scored.jsonl"))
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert code == 0 and [{k: v for k, v in s.items() if not k.startswith("reward_")} for s in scored] == rows
    wins = 0
    for row, s in zip(rows, scored):
        for side in ("chosen", "rejected"):
            assert s[f"reward_{side}"] == pytest.approx(_direct(tiny_reward_model_dir, tiny_tokenizer, row["prompt"],
                                                                row[side]), abs=1e-5)
        wins += s["reward_chosen"] > s["reward_rejected"]
    assert "3 rows scored (mean score " in out and f"pair accuracy {wins / 3:.4f}: chosen scored above rejected" in out

    (tmp_path / "answers.jsonl").write_text(json.dumps({"prompt": "abc", "completion": "d"}) + "\n")
    code, out, _ = cli("-i", str(tmp_path / "answers.jsonl"), "-o", str(tmp_path / "a.jsonl"))
    [row] = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert code == 0 and row["reward_score"] == pytest.approx(_direct(tiny_reward_model_dir, tiny_tokenizer, "abc", "d"),
                                                              abs=1e-5)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "abc"}) + "\n")
    code, _, err = cli("-i", str(tmp_path / "bad.jsonl"), "-o", str(tmp_path / "b.jsonl"))
    assert code == 2 and err.splitlines()[-1] == (f"error: {tmp_path}/bad.jsonl:1: field 'response' is missing (a row "
                                                  "needs prompt and response, or prompt, chosen and rejected)")
    assert not (tmp_path / "b.jsonl").exists()


def test_score_cli_refuses_a_causal_lm(tiny_model_dir, tmp_path, capsys):
    from rayalign.cli import main

    (tmp_path / "x.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    with pytest.raises(SystemExit) as info:
        main(["score", "-m", str(tiny_model_dir), "-i", str(tmp_path / "x.jsonl"), "-o", str(tmp_path / "o.jsonl")])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: --model: '{tiny_model_dir}' is not a one-label sequence "
                                              "classifier (architectures ['Qwen2ForCausalLM'], num_labels ")
