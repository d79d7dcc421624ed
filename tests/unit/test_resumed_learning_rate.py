"""A resumed optimizer takes the recipe's learning rate (a PBT explore step changes it between a checkpoint
and its resume); with the same rate the restored schedule is recomputed exactly."""

import pytest
import torch
from transformers import get_scheduler

from rayalign.training.loop import configured_learning_rate


def trained(lr: float, steps: int, kind: str = "linear"):
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=lr)
    scheduler = get_scheduler(kind, optimizer, num_warmup_steps=2, num_training_steps=10)
    for _ in range(steps):
        param.sum().backward()
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant_with_warmup"])
def test_the_configured_rate_wins_over_the_checkpoints(kind):
    saved_opt, saved_sched = trained(1e-3, 4, kind)
    optimizer, scheduler = trained(5e-3, 0, kind)
    optimizer.load_state_dict(saved_opt.state_dict())
    scheduler.load_state_dict(saved_sched.state_dict())
    assert optimizer.param_groups[0]["lr"] == saved_opt.param_groups[0]["lr"]  # the checkpoint's rate
    configured_learning_rate(optimizer, scheduler, 5e-3)
    expected = {"linear": 5e-3 * 6 / 8, "cosine": None, "constant_with_warmup": 5e-3}[kind]
    ratio = saved_opt.param_groups[0]["lr"] / 1e-3
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected if expected else 5e-3 * ratio, rel=1e-12)
    assert scheduler.get_last_lr() == [optimizer.param_groups[0]["lr"]]
    scheduler.step()  # and the schedule goes on from step 4 with the new peak
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-3 * saved_sched.lr_lambdas[0](5), rel=1e-12)


def test_the_same_rate_is_restored_bit_for_bit():
    saved_opt, saved_sched = trained(1e-3, 3, "cosine")
    optimizer, scheduler = trained(1e-3, 0, "cosine")
    optimizer.load_state_dict(saved_opt.state_dict())
    scheduler.load_state_dict(saved_sched.state_dict())
    configured_learning_rate(optimizer, scheduler, 1e-3)
    assert optimizer.param_groups[0]["lr"] == saved_opt.param_groups[0]["lr"]
