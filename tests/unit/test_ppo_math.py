"""PPO's pieces against values computed by hand: the KL folded into per-token rewards, GAE over rows whose
completions start at different columns, whitening, explained variance and the clipped value loss."""

import pytest
import torch

from rayalign.algorithms.ppo import explained_variance, gae, last_token, token_rewards, value_loss, whiten

GARBAGE = 9.0  # off-mask entries must not leak into anything


def close(x: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(x, torch.tensor(expected, dtype=x.dtype), atol=1e-6, rtol=1e-5)


def test_last_token_and_kl_folded_rewards():
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert last_token(mask).int().tolist() == [[0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    logp = torch.tensor([[GARBAGE, -1.0, -2.0, GARBAGE], [-1.0, -1.0, -1.0, -1.0], [0.0] * 4])
    ref = torch.tensor([[0.0, -1.5, -1.0, 0.0], [-1.0, -1.0, -1.0, -2.0], [0.0] * 4])
    rewards, kl = token_rewards(torch.tensor([2.0, -1.0, 5.0]), logp, ref, mask, kl_coef=0.1)
    # k1 = log pi - log pi_ref: row 0 [., 0.5, -1, .], row 1 [0, 0, 0, 1]
    close(rewards, [[0, -0.05, 0.1 + 2.0, 0], [0, 0, 0, -0.1 - 1.0], [0, 0, 0, 0]])
    assert kl[0].tolist() == pytest.approx([0, 0.5, -1.0, 0])
    without, _ = token_rewards(torch.tensor([2.0, -1.0, 5.0]), logp, None, mask, kl_coef=0.1)
    assert without.tolist() == [[0, 0, 2.0, 0], [0, 0, 0, -1.0], [0, 0, 0, 0]]


def test_gae_by_hand():
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    rewards = torch.tensor([[GARBAGE, 0.1, -0.2, 1.0, GARBAGE], [0.5, 2.0, GARBAGE, GARBAGE, GARBAGE]])
    values = torch.tensor([[GARBAGE, 0.5, 0.4, 0.3, GARBAGE], [1.0, -1.0, GARBAGE, GARBAGE, GARBAGE]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0: d3 = 1 - 0.3 = 0.7; d2 = -0.2 + 0.9 x 0.3 - 0.4 = -0.33, A2 = -0.33 + 0.72 x 0.7 = 0.174;
    #        d1 = 0.1 + 0.9 x 0.4 - 0.5 = -0.04, A1 = -0.04 + 0.72 x 0.174 = 0.08528
    # row 1: d1 = 2 + 1 = 3; d0 = 0.5 - 0.9 - 1 = -1.4, A0 = -1.4 + 0.72 x 3 = 0.76
    close(advantages, [[0, 0.08528, 0.174, 0.7, 0], [0.76, 3.0, 0, 0, 0]])
    close(returns, [[0, 0.58528, 0.574, 1.0, 0], [1.76, 2.0, 0, 0, 0]])


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    torch.manual_seed(0)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0]] * 3)
    rewards, values = torch.randn(3, 7), torch.randn(3, 7)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    masked = rewards * mask
    to_go = masked.flip(1).cumsum(1).flip(1)
    assert torch.allclose(advantages, (to_go - values) * mask, atol=1e-6)
    assert torch.allclose(returns, to_go * mask, atol=1e-6)


def test_whiten_and_explained_variance():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    x = torch.tensor([[1.0, 2.0, GARBAGE], [3.0, GARBAGE, GARBAGE]])
    close(whiten(x, mask), [[-1, 0, 0], [1, 0, 0]])  # mean 2, unbiased var 1
    assert explained_variance(x, x, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(x, 2.0), x, mask) == pytest.approx(0.0)


def test_clipped_value_loss_by_hand():
    mask = torch.tensor([1, 1, 0])
    values, old, returns = torch.tensor([1.0, 2.0, GARBAGE]), torch.tensor([0.5, 2.5, 0.0]), torch.tensor([2.0, 2.0, 0.0])
    loss, metrics = value_loss(values, old, returns, mask, clip=0.2)
    # clipped values 0.7, 2.3: errors (1, 0) vs clipped (1.69, 0.09); 0.5 x mean(1.69, 0.09)
    assert loss.item() == pytest.approx(0.445) and metrics["value_clip_fraction"] == 1.0
    plain, _ = value_loss(values, old, returns, mask, clip=None)
    assert plain.item() == pytest.approx(0.25)
    grad_values = values.clone().requires_grad_(True)
    value_loss(grad_values, old, returns, mask, clip=0.2)[0].backward()
    assert grad_values.grad.tolist() == [0.0, 0.0, 0.0]  # both clipped terms win: no gradient through V
