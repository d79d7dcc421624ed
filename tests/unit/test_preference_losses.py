"""DPO-family losses against numbers computed by hand from the papers' formulas (math module only)."""

import math

import pytest
import torch

from rayalign.algorithms import preference as P

# two pairs: policy / reference log-probs of chosen and rejected completions
PC, PR = torch.tensor([-5.0, -8.0]), torch.tensor([-7.0, -6.0])
RC, RR = torch.tensor([-6.0, -7.5]), torch.tensor([-6.5, -6.5])
LC, LR = torch.tensor([4.0, 5.0]), torch.tensor([2.0, 3.0])
BETA = 0.1
# log-ratio margins delta = (pc - rc) - (pr - rr): pair 0: 1 - (-0.5) = 1.5; pair 1: -0.5 - 0.5 = -1.0
DELTA = [1.5, -1.0]


def logsig(x):
    return -math.log1p(math.exp(-x))


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_sigmoid_dpo_and_cdpo():
    loss, m = P.sigmoid_loss(PC, PR, RC, RR, BETA)
    assert loss.item() == pytest.approx(sum(-logsig(BETA * d) for d in DELTA) / 2, abs=1e-6)
    assert m["rewards/chosen"] == pytest.approx((0.1 * 1 + 0.1 * -0.5) / 2)
    assert m["rewards/rejected"] == pytest.approx((0.1 * -0.5 + 0.1 * 0.5) / 2)
    assert m["rewards/margins"] == pytest.approx(0.1 * (1.5 - 1.0) / 2)
    assert m["rewards/accuracies"] == 0.5
    eps = 0.1
    loss, _ = P.sigmoid_loss(PC, PR, RC, RR, BETA, label_smoothing=eps)
    want = sum(-(1 - eps) * logsig(BETA * d) - eps * logsig(-BETA * d) for d in DELTA) / 2
    assert loss.item() == pytest.approx(want, abs=1e-6)


def test_ipo_averages_log_ratios_per_token():
    loss, _ = P.ipo_loss(PC, PR, RC, RR, BETA, LC, LR)
    # pair 0: 1/4 - (-0.5)/2 = 0.5 ; pair 1: -0.5/5 - 0.5/3
    d0, d1 = 1 / 4 + 0.5 / 2, -0.5 / 5 - 0.5 / 3
    want = ((d0 - 5) ** 2 + (d1 - 5) ** 2) / 2  # 1 / (2 * 0.1) = 5
    assert loss.item() == pytest.approx(want, abs=1e-5)


def test_hinge_and_robust():
    loss, _ = P.hinge_loss(PC, PR, RC, RR, 1.0)
    assert loss.item() == pytest.approx((max(0, 1 - 1.5) + max(0, 1 + 1.0)) / 2)
    eps = 0.2
    loss, _ = P.robust_loss(PC, PR, RC, RR, BETA, eps)
    want = sum(((1 - eps) * -logsig(BETA * d) - eps * -logsig(-BETA * d)) / (1 - 2 * eps) for d in DELTA) / 2
    assert loss.item() == pytest.approx(want, abs=1e-6)


def test_simpo_is_reference_free_and_length_normalised():
    beta, gamma = 2.0, 0.5
    loss, m = P.simpo_loss(PC, PR, LC, LR, beta, gamma)
    z = [beta * (-5 / 4 - -7 / 2) - gamma, beta * (-8 / 5 - -6 / 3) - gamma]
    assert loss.item() == pytest.approx(sum(-logsig(x) for x in z) / 2, abs=1e-6)
    assert m["rewards/chosen"] == pytest.approx(beta * (-5 / 4 + -8 / 5) / 2)


def test_orpo_adds_odds_ratio_to_nll():
    pc, pr = torch.tensor([-0.5, -1.0]), torch.tensor([-1.5, -0.8])
    lc, lr = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0])
    nll = torch.tensor(0.7)
    loss, m = P.orpo_loss(pc, pr, lc, lr, nll, 0.25)

    def log_odds(avg):
        return avg - math.log1p(-math.exp(avg))

    ratios = [logsig(log_odds(-0.5) - log_odds(-1.5)), logsig(log_odds(-0.5) - log_odds(-0.8))]
    assert loss.item() == pytest.approx(0.7 - 0.25 * sum(ratios) / 2, abs=1e-6)
    assert m["nll_loss"] == pytest.approx(0.7)


def test_kto_uses_the_clamped_kl_reference_point():
    policy = torch.tensor([-4.0, -6.0, -5.0])
    ref = torch.tensor([-5.0, -5.0, -5.5])
    desirable = torch.tensor([True, False, True])
    kl = P.kto_kl(torch.tensor([-3.0, -4.0]), torch.tensor([-3.5, -4.1]))  # mean(0.5, 0.1) = 0.3
    assert kl.item() == pytest.approx(0.3)
    assert P.kto_kl(torch.tensor([-3.0]), torch.tensor([-2.0])).item() == 0.0  # clamped at 0
    beta = 0.5
    loss, m = P.kto_loss(policy, ref, desirable, kl, beta, desirable_weight=1.0, undesirable_weight=2.0)
    good = [beta * 1.0, beta * 0.5]
    bad = [beta * -1.0]
    want = ([1 - sig(g - beta * 0.3) for g in good] + [2 * (1 - sig(beta * 0.3 - b)) for b in bad])
    assert loss.item() == pytest.approx(sum(want) / 3, abs=1e-6)
    assert m["rewards/chosen"] == pytest.approx(sum(good) / 2)


def test_gradients_flow_only_through_the_policy():
    pc = PC.clone().requires_grad_()
    loss, _ = P.sigmoid_loss(pc, PR, RC, RR, BETA)
    loss.backward()
    # d/dpc of -logsig(beta*delta)/2 = -beta * sig(-beta*delta) / 2
    assert pc.grad.tolist() == pytest.approx([-BETA * sig(-BETA * d) / 2 for d in DELTA], abs=1e-6)
