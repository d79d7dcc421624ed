"""Reward models as reward terms on a real Ray: actors score as the classifier does, normalisation runs over the
whole run, and a GRPO run rewarded by a reward model alone resumes exactly (the running moments ride in the
checkpoints). That run is also GRPO's resume test on the HF engine, with the reference actor: a stopped and
resumed run equals the straight one, a run's directory is not reused without --resume, a finished run is not
continued."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rayalign.checkpoint import checkpoints
from rayalign.config import RewardConfig, RewardFnConfig, RewardModelConfig
from rayalign.data.collate import tokenize_preference
from rayalign.errors import UserError
from rayalign.metrics import read_metrics
from rayalign.recipes.grpo import run

from rl_helpers import assert_same_run, grpo_recipe, prompt_file

PROMPTS = ["Count the r's in 'berry'.", [{"role": "user", "content": "How many a's in 'banana'?"}]]
COMPLETIONS = ["2", "There are \\boxed{3}.", "I do not know, sorry about that", ""]


def _direct(model_dir, tokenizer, pairs) -> list[float]:
    """Each pair alone through the classifier, tokenised as a training pair's chosen side."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for prompt, completion in pairs:
            p, c = tokenize_preference(tokenizer, {"prompt": prompt, "chosen": completion, "rejected": ""}, 64)["chosen"]
            out.append(model(input_ids=torch.tensor([p + c])).logits[0, 0].item())
    return out


def test_reward_model_actors_score_as_the_classifier_does(ray_local, tiny_reward_model_dir, tiny_tokenizer):
    from rayalign.workers.reward import RewardPool, Sample
    from rayalign.workers.reward_model import RewardModels

    pairs = [(p, c) for p in PROMPTS for c in COMPLETIONS]  # 8 pairs of unequal lengths, padded in batches of 3
    models = RewardModels([RewardModelConfig(path=str(tiny_reward_model_dir), name="rm", num_workers=2,
                                             batch_size=3, max_length=64, weight=0.5),
                           RewardModelConfig(path=str(tiny_reward_model_dir), name="rm_norm", normalize=True,
                                             max_length=64)], run="rm-test", deadline_s=120, start_timeout_s=300)
    pool = RewardPool(RewardConfig(functions=[RewardFnConfig(name="boxed_answer")], num_cpus=0.25), models=models)
    try:
        expected = _direct(tiny_reward_model_dir, tiny_tokenizer, pairs)
        assert max(expected) - min(expected) > 1e-4  # the head tells these sequences apart
        scores = models.start(pairs)()
        assert scores["rm"][0] == pytest.approx(expected, abs=1e-5) and scores["rm"][1] == scores["rm"][0]
        first = torch.tensor(expected, dtype=torch.float64)
        assert scores["rm_norm"][1] == pytest.approx(((first - first.mean()) / first.std()).tolist(), abs=1e-4)

        # through the pool: the rule's term, plus 0.5 x the raw score, plus the normalised one (moments of 16)
        metadata = {"answer": "3"}
        scored = pool.score([Sample(p, c, metadata) for p, c in pairs])
        both = torch.cat([first, first])
        normalised = ((first - both.mean()) / both.std()).tolist()
        for out, raw, norm, (_, completion) in zip(scored, expected, normalised, pairs):
            rule = 1.0 if completion == "There are \\boxed{3}." else 0.0
            assert out.parts == pytest.approx({"boxed_answer": rule, "rm": raw, "rm_norm": raw}, abs=1e-5)
            assert out.reward == pytest.approx(rule + 0.5 * raw + norm, abs=1e-4)
        assert json.loads(models.state()["reward_models.json"])["rm_norm"]["count"] == 16
    finally:
        pool.shutdown()


def test_grpo_on_a_reward_model_alone_resumes_exactly(ray_local, tiny_model_dir, tiny_reward_model_dir, tmp_path):
    prompts = prompt_file(tmp_path)

    def recipe(out, **training):
        cfg = grpo_recipe(tiny_model_dir, prompts, out, max_steps=3, save_steps=1, save_total_limit=None,
                          **training)
        reward = {"models": [{"path": str(tiny_reward_model_dir), "normalize": True, "max_length": 96}],
                  "num_cpus": 0.25}
        return cfg.model_copy(update={"reward": RewardConfig.model_validate(reward)})

    straight = run(recipe(tmp_path / "a"))
    metrics = read_metrics(tmp_path / "a")
    moments = [json.loads((c / "reward_models.json").read_text())["reward_model"] for c in checkpoints(tmp_path / "a")]
    assert [m["count"] for m in moments] == [16, 32, 48]
    assert metrics[0]["reward_mean"] == pytest.approx(0, abs=1e-5)  # step 1 is normalised by itself
    for k, (m, seen) in enumerate(zip(metrics, moments)):
        # step k's reward: its raw mean score standardised by the moments of steps 1..k (16 samples each)
        assert m["reward_std"] > 0 and m["grad_norm"] > 0
        assert seen["mean"] == pytest.approx(sum(x["reward/reward_model"] for x in metrics[:k + 1]) / (k + 1), abs=1e-6)
        std = (seen["m2"] / (seen["count"] - 1)) ** 0.5
        assert m["reward_mean"] == pytest.approx((m["reward/reward_model"] - seen["mean"]) / std, abs=1e-4)

    assert metrics[0]["kl"] == pytest.approx(0, abs=1e-7) and metrics[2]["kl"] > 1e-6  # the reference actor's KL

    assert run(recipe(tmp_path / "b", stop_after_steps=1)) is None
    with pytest.raises(UserError, match="already holds checkpoints"):
        run(recipe(tmp_path / "b"))
    resumed = run(recipe(tmp_path / "b", resume="auto"))
    assert_same_run(tmp_path / "a", tmp_path / "b", straight, resumed,
                    ("reward_mean", "reward/reward_model", "loss", "grad_norm", "kl", "mismatch_kl", "response_length"))
    with pytest.raises(UserError, match="already finished 3 steps"):
        run(recipe(tmp_path / "b", resume="auto"))
