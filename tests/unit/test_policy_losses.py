"""GRPO-family advantages and policy losses against numbers computed by hand from the papers' formulas."""

import math

import pytest
import torch

from rayalign.algorithms import advantages as A
from rayalign.algorithms import policy as P

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])


def test_group_advantages():
    # group 0: mean 0.5, unbiased std sqrt(1/3); group 1 all equal -> 0
    s = math.sqrt(1 / 3)
    assert A.grpo(REWARDS)[0].tolist() == pytest.approx([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s], rel=1e-5)
    assert A.grpo(REWARDS)[1].tolist() == [0.0] * 4
    assert A.dr_grpo(REWARDS)[0].tolist() == [0.5, -0.5, -0.5, 0.5]
    # leave-one-out: r0 - mean(0, 0, 1) = 1 - 1/3
    assert A.rloo(REWARDS)[0, 0].item() == pytest.approx(2 / 3)
    assert A.rloo(REWARDS)[0, 1].item() == pytest.approx(0 - 2 / 3)
    with pytest.raises(ValueError, match="group_size >= 2"):
        A.rloo(torch.ones(3, 1))


def test_reinforce_pp_whitens_over_the_batch():
    adv = A.reinforce_pp(REWARDS)
    centred = [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]
    std = math.sqrt(sum(c * c for c in centred) / 7)
    assert adv.flatten().tolist() == pytest.approx([c / std for c in centred], rel=1e-5)


def test_dapo_filters_and_overlong_penalty():
    assert A.informative_groups(REWARDS).tolist() == [True, False]
    pen = A.overlong_penalty(torch.tensor([10, 16, 18, 20, 25]), max_len=20, cache_len=4)
    assert pen.tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0])


LOGP = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.2, 0.0]])
OLD = torch.tensor([[-1.2, -1.5, -0.5], [-1.0, -0.2, 0.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
ADV = torch.tensor([1.0, -2.0])
PPO = {"clip_low": 0.2, "clip_high": 0.2}  # the functions take every hyperparameter explicitly
DAPO = {"clip_low": 0.2, "clip_high": 0.28}


def _token_losses(clip_low, clip_high):
    out = []
    for i in range(2):
        row = []
        for t in range(3):
            ratio = math.exp(LOGP[i, t] - OLD[i, t])
            a = ADV[i].item()
            row.append(-min(ratio * a, min(max(ratio, 1 - clip_low), 1 + clip_high) * a))
        out.append(row)
    return out


def test_grpo_token_mean_and_clip_fraction():
    tl = _token_losses(0.1, 0.1)
    loss, m = P.grpo_loss(LOGP, OLD, ADV, MASK, clip_low=0.1, clip_high=0.1, loss_agg="token-mean")
    assert loss.item() == pytest.approx((sum(tl[0]) + tl[1][0] + tl[1][1]) / 5, rel=1e-6)
    # ratio e^0.2 = 1.22 > 1.1 with A > 0 -> clipped; e^-0.5 = 0.61 < 0.9 with A < 0 -> clipped
    assert m["clip_fraction"] == pytest.approx(2 / 5)


def test_loss_aggregations():
    tl = _token_losses(0.2, 0.2)
    seq_sums = [sum(tl[0]), tl[1][0] + tl[1][1]]
    loss, _ = P.grpo_loss(LOGP, OLD, ADV, MASK, **PPO, loss_agg="seq-mean-token-sum")
    assert loss.item() == pytest.approx(sum(seq_sums) / 2, rel=1e-6)
    loss, _ = P.grpo_loss(LOGP, OLD, ADV, MASK, **PPO, loss_agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx((seq_sums[0] / 3 + seq_sums[1] / 2) / 2, rel=1e-6)
    loss, _ = P.dr_grpo_loss(LOGP, OLD, ADV, MASK, max_len=8, **PPO)
    assert loss.item() == pytest.approx(sum(seq_sums) / (2 * 8), rel=1e-6)


def test_dapo_clips_higher():
    tl = _token_losses(0.2, 0.28)
    loss, _ = P.dapo_loss(LOGP, OLD, ADV, MASK, **DAPO)
    assert loss.item() == pytest.approx((sum(tl[0]) + tl[1][0] + tl[1][1]) / 5, rel=1e-6)
    # the 1.22 ratio is inside 1 + 0.28: not clipped, unlike with clip_high 0.2
    assert P.dapo_loss(LOGP, OLD, ADV, MASK, **DAPO)[1]["clip_fraction"] == pytest.approx(1 / 5)


def test_gspo_sequence_ratio():
    s0 = math.exp((0.2 - 0.5 + 0.0) / 3)
    s1 = math.exp((-0.5 + 0.0) / 2)
    cl, ch = 0.05, 0.05
    want = [-min(s0 * 1.0, min(max(s0, 1 - cl), 1 + ch) * 1.0), -min(s1 * -2.0, min(max(s1, 1 - cl), 1 + ch) * -2.0)]
    loss, m = P.gspo_loss(LOGP, OLD, ADV, MASK, clip_low=cl, clip_high=ch)
    assert loss.item() == pytest.approx(sum(want) / 2, rel=1e-6)
    assert m["clip_fraction"] == pytest.approx(0.5)  # only sequence 1 (ratio 0.61, A < 0) is clipped


def test_kl_estimators_and_penalty():
    logp, ref = torch.tensor([[-1.0]]), torch.tensor([[-1.5]])
    log_r = -0.5
    assert P.kl_penalty(logp, ref, "k1").item() == pytest.approx(0.5)
    assert P.kl_penalty(logp, ref, "k2").item() == pytest.approx(0.125)
    assert P.kl_penalty(logp, ref, "k3").item() == pytest.approx(math.exp(log_r) - 1 - log_r)
    assert P.kl_penalty(ref, ref, "k3").item() == 0.0
    base, _ = P.grpo_loss(LOGP, OLD, ADV, MASK, **PPO, loss_agg="token-mean")
    ref_logp = LOGP - 0.3
    with_kl, m = P.grpo_loss(LOGP, OLD, ADV, MASK, **PPO, loss_agg="token-mean", kl_coef=0.1, ref_logp=ref_logp)
    k3 = math.exp(-0.3) - 1 + 0.3  # log r = -0.3 on every token
    assert with_kl.item() == pytest.approx(base.item() + 0.1 * k3, rel=1e-5)
    assert m["kl"] == pytest.approx(k3, rel=1e-5)


def test_policy_gradient_direction():
    logp = LOGP.clone().requires_grad_()
    loss, _ = P.grpo_loss(logp, logp.detach(), ADV, MASK, **PPO, loss_agg="token-mean")  # on-policy: ratio 1, nothing clipped
    loss.backward()
    # d/dlogp of -A * ratio / 5 at ratio 1 = -A / 5 on every masked token
    assert logp.grad.flatten().tolist() == pytest.approx([-0.2, -0.2, -0.2, 0.4, 0.4, 0.0])


def test_tis_weights_are_capped_learner_over_rollout_ratios():
    learner, rollout = torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    w, m = P.tis_weights(learner, rollout, mask, cap=1.5)
    assert w.tolist()[0][:2] == pytest.approx([1.5, math.exp(-1.0)]) and w[0, 2] == 1.0  # capped; off the mask: 1
    assert m["tis_capped_fraction"] == 0.5 and m["tis_weight_mean"] == pytest.approx((1.5 + math.exp(-1)) / 2)
    seq, _ = P.tis_weights(learner, rollout, mask, cap=10.0, sequence=True)  # geometric mean of the 2 tokens
    assert seq.tolist() == pytest.approx([math.exp((0.5 - 1.0) / 2)])


def test_tis_weighted_advantages_scale_each_tokens_gradient():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.7]], requires_grad=True)
    mask, adv = torch.ones(2, 2), torch.tensor([1.0, -2.0])
    w, _ = P.tis_weights(logp, torch.tensor([[-1.2, -1.0], [-0.5, -0.9]]), mask, cap=2.0)
    loss, _ = P.grpo_loss(logp, logp.detach(), adv.unsqueeze(-1) * w, mask, clip_low=0.2, clip_high=0.2,
                          loss_agg="token-mean")
    loss.backward()
    # on-policy ratio 1: d loss / d logp_t = -A_i w_t / (number of tokens)
    assert torch.allclose(logp.grad, -(adv.unsqueeze(-1) * w) / 4)
    assert torch.allclose(w, torch.tensor([[math.exp(0.2), math.exp(-1.0)], [1.0, math.exp(0.2)]]))
