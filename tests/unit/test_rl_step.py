"""The learner's RL step in pure torch (one process, no Ray): mini-batch plan, loss against the formula,
micro-batch invariance, mismatch_kl, and every algorithm's loss wiring."""

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from rayalign.config import AlgorithmConfig
from rayalign.data.collate import collate_rollout
from rayalign.models.logprobs import next_token_logps
from rayalign.training.rl_step import PolicyLearner, plan
from rayalign.training.sharding import Strategy


def test_plan_gives_each_sample_to_one_rank_with_equal_micro_counts():
    world, n = 3, 10
    plans = [plan(n, 4, 1, seed=0, step=5, rank=r, world=world) for r in range(world)]
    assert len({len(p) for p in plans}) == 1 and len(plans[0]) == 3  # ceil(10 / 4) mini-batches
    for j in range(3):
        assert len({len(p[j]) for p in plans}) == 1  # same number of micro batches on every rank
    real = sorted(i for p in plans for mb in p for rows, ok in mb if ok for i in rows)
    assert real == list(range(n))
    assert plan(n, None, 4, 0, 5, 0, 1) != plan(n, None, 4, 0, 6, 0, 1)  # reshuffled every step


@pytest.fixture()
def batch(tiny_tokenizer):
    gen = torch.Generator().manual_seed(0)
    prompts = [tiny_tokenizer(f"How many 'a' in '{w}'?", add_special_tokens=False)["input_ids"]
               for w in ("banana", "apple", "kiwi", "mango")]
    samples = [(p, torch.randint(5, 900, (k,), generator=gen).tolist(), [-6.9] * k)
               for p, k in zip(prompts, (3, 7, 5, 2))]
    return collate_rollout(samples, torch.tensor([1.0, -0.5, 0.25, -0.75]), tiny_tokenizer.pad_token_id)


def _learner(model, algorithm, micro=4):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    strategy = Strategy(model, model)
    strategy.attach(opt, sched)
    return PolicyLearner(strategy, algorithm, max_new_tokens=8, micro_batch_size=micro,
                         max_grad_norm=None, seed=0, device=torch.device("cpu"))


def test_on_policy_grpo_loss_is_minus_token_mean_advantage(tiny_model_dir, batch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        logp, _ = next_token_logps(model, batch.input_ids, batch.attention_mask)
    batch.rollout_logps = logp * batch.completion_mask  # the engine ran the same weights
    m = _learner(model, AlgorithmConfig(name="grpo", loss_agg="token-mean", kl_coef=0)).train_step(batch, step=0)
    lengths = torch.tensor([3.0, 7, 5, 2])
    # ratio = 1 on-policy: loss = -sum_i A_i |o_i| / sum_i |o_i|
    assert m["loss"] == pytest.approx(-(batch.advantages * lengths).sum().item() / lengths.sum().item(), abs=1e-6)
    assert m["mismatch_kl"] == pytest.approx(0, abs=1e-12) and m["optimizer_steps"] == 1
    assert m["clip_fraction"] == 0 and m["ratio_mean"] == pytest.approx(1.0)


def test_micro_batches_do_not_change_the_update(tiny_model_dir, batch):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    models = [copy.deepcopy(base) for _ in range(2)]
    for model, micro in zip(models, (4, 1)):
        # grpo's default aggregation, seq-mean-token-mean: each sequence's weight must not depend on micro
        _learner(model, AlgorithmConfig(name="grpo", kl_coef=0), micro).train_step(batch, 0)
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not torch.equal(models[0].model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


def test_mismatch_kl_is_k3_of_engine_vs_learner(tiny_model_dir, batch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        logp, _ = next_token_logps(model, batch.input_ids, batch.attention_mask)
    shift = 0.1 * batch.completion_mask  # the engine's log-probs 0.1 higher on every sampled token
    batch.rollout_logps = (logp + shift) * batch.completion_mask
    # two mini-batches x 2 epochs: old log-probs come from the separate pass before any update
    m = _learner(model, AlgorithmConfig(name="grpo", kl_coef=0, mini_batch_size=2, ppo_epochs=2)).train_step(batch, 0)
    d = torch.tensor(-0.1, dtype=torch.float64)  # log r = learner - engine
    assert m["mismatch_kl"] == pytest.approx((torch.exp(d) - 1 - d).item(), rel=1e-4)
    assert m["optimizer_steps"] == 4


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo", "gspo", "rloo", "reinforce_pp"])
def test_every_algorithm_trains(tiny_model_dir, batch, name):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        batch.rollout_logps = next_token_logps(model, batch.input_ids, batch.attention_mask)[0] * batch.completion_mask
    batch.ref_logps = batch.rollout_logps - 0.05 * batch.completion_mask
    kl = 0.0 if name == "dapo" else 0.1
    kl_args = {"kl_coef": kl, "kl_estimator": "k3"} if kl else {}
    m = _learner(model, AlgorithmConfig(name=name, clip_high=0.28, **kl_args)).train_step(batch, 0)
    assert torch.isfinite(torch.tensor(m["loss"])) and m["grad_norm"] > 0
    if kl:
        assert m["kl"] == pytest.approx(torch.tensor(-0.05).exp().item() - 1 + 0.05, rel=1e-4)  # k3, log r = -0.05


def test_a_nan_reward_stops_the_step_before_the_update(tiny_model_dir, batch):
    """Issue 20: a reward returning NaN flowed into the weights; now the step stops, the weights unchanged."""
    from rayalign.training.guards import NonFiniteError

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = copy.deepcopy(model.state_dict())
    batch.advantages[1] = float("nan")
    batch.policy_version = 6  # sampled by this step's weights
    with pytest.raises(NonFiniteError, match=r"^step 7: grad_norm is nan; stopped before the optimizer update"):
        _learner(model, AlgorithmConfig(name="grpo", kl_coef=0)).train_step(batch, step=6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_tis_weights_the_loss_by_learner_over_engine_probability(tiny_model_dir, batch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        logp, _ = next_token_logps(model, batch.input_ids, batch.attention_mask)
    lengths = torch.tensor([3.0, 7, 5, 2])
    on_policy = -(batch.advantages * lengths).sum().item() / lengths.sum().item()
    # the engine gave every sampled token 0.1 less log-prob (older weights): weight e^0.1, under the cap
    batch.rollout_logps = (logp - 0.1) * batch.completion_mask
    algorithm = AlgorithmConfig(name="grpo", loss_agg="token-mean", kl_coef=0, tis_cap=2.0)
    m = _learner(copy.deepcopy(model), algorithm).train_step(batch, step=0)
    assert m["loss"] == pytest.approx(math.exp(0.1) * on_policy, abs=1e-5)
    assert m["tis_weight_mean"] == pytest.approx(math.exp(0.1), abs=1e-5) and m["tis_capped_fraction"] == 0
    capped = AlgorithmConfig(name="grpo", loss_agg="token-mean", kl_coef=0, tis_cap=1.05)
    m = _learner(copy.deepcopy(model), capped).train_step(batch, step=0)
    assert m["loss"] == pytest.approx(1.05 * on_policy, abs=1e-5) and m["tis_capped_fraction"] == 1.0


def test_staleness_is_reported_and_samples_older_than_async_steps_are_refused(tiny_model_dir, batch):
    """The learner reads the batch's ``policy_version`` (the weights that sampled it): one-step-off samples
    are one step stale and train; a batch older than ``algorithm.async_steps`` allows, or from weights the
    learner has not reached, is refused before any update."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = copy.deepcopy(model.state_dict())
    batch.policy_version = 3
    with pytest.raises(ValueError, match=r"^step 5: samples from the weights after step 3, 1 step\(s\) stale; "
                                         r"algorithm.async_steps allows 0 to 0$"):
        _learner(model, AlgorithmConfig(name="grpo", kl_coef=0)).train_step(batch, step=4)
    with pytest.raises(ValueError, match=r"-1 step\(s\) stale"):
        _learner(model, AlgorithmConfig(name="grpo", kl_coef=0, async_steps=1)).train_step(batch, step=2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    m = _learner(model, AlgorithmConfig(name="grpo", kl_coef=0, async_steps=1, tis_cap=2.0)).train_step(batch, step=4)
    assert m["staleness"] == 1.0 and m["optimizer_steps"] == 1
