"""The reward model's Bradley-Terry loss against hand-computed values, and its objective on a score head."""

import math

import pytest
import torch

from rayalign.algorithms.reward_model import bradley_terry_loss
from rayalign.batch import RewardBatch
from rayalign.config import PreferenceConfig
from rayalign.training.objectives import RewardModelObjective


def nll(x: float) -> float:
    """-log sigma(x)"""
    return math.log1p(math.exp(-x))


def test_bradley_terry_with_margin_and_centering_by_hand():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    loss, m = bradley_terry_loss(chosen, rejected)
    assert loss.item() == pytest.approx((nll(1.0) + nll(-1.0)) / 2, abs=1e-6)
    assert m == pytest.approx({"accuracy": 0.5, "rewards/chosen": 0.5, "rewards/rejected": 0.5, "rewards/margins": 0.0})
    # a margin of 0.5 on the first pair: it must win by more; centering adds 0.1 x mean((c + r)^2) = 0.1 x 1
    loss, _ = bradley_terry_loss(chosen, rejected, torch.tensor([0.5, 0.0]), center_coef=0.1)
    assert loss.item() == pytest.approx((nll(0.5) + nll(-1.0)) / 2 + 0.1, abs=1e-6)


class ScoreHead(torch.nn.Module):
    """A stand-in score model: the sum of a sequence's token ids x w, as logits [N, 1] (HF's output shape)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.1))

    def forward(self, input_ids, attention_mask, use_cache=False):
        from types import SimpleNamespace

        return SimpleNamespace(logits=((input_ids * attention_mask).sum(-1, keepdim=True) * self.w))


def test_objective_splits_chosen_from_rejected_and_sums_over_pairs():
    # pairs: (chosen ids sum 6, rejected 3) and (chosen 1, rejected 5); scores x 0.1; padding is masked out
    ids = torch.tensor([[1, 2, 3], [1, 0, 0], [3, 0, 0], [5, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 0, 0]])
    batch = RewardBatch(ids, mask, torch.tensor([0.0, 0.2]))
    objective = RewardModelObjective(PreferenceConfig())
    loss_sum, m = objective.loss(ScoreHead(), batch)
    assert objective.units(batch) == 2
    assert loss_sum.item() == pytest.approx(nll(0.6 - 0.3) + nll(0.1 - 0.5 - 0.2), abs=1e-6)
    assert m["accuracy"] == 0.5 and m["rewards/margins"] == pytest.approx(((0.6 - 0.3) + (0.1 - 0.5)) / 2)
