"""Issue 20: a checkpoint's optimizer and scheduler files load as tensors only; a planted pickle payload is
refused in one line and never runs."""

import os

import pytest
import torch

from rayalign.checkpoint import CheckpointError, TrainerState, load_tensors, load_training_state, save_training_state

MARK = "/tmp/rayalign-payload-ran"


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARK}",))


def real_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    save_training_state(tmp_path, sched, TrainerState(step=1, samples_seen=8, epoch=0.5))
    return opt


def test_saved_state_loads_as_tensors(tmp_path):
    opt = real_state(tmp_path)
    optimizer = load_tensors(tmp_path / "optimizer.pt")
    scheduler, state = load_training_state(tmp_path)
    assert torch.equal(optimizer["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert optimizer["param_groups"][0]["betas"] == (0.9, 0.98) and scheduler["last_epoch"] == 1
    assert state == TrainerState(step=1, samples_seen=8, epoch=0.5)


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt"])
def test_planted_payload_is_refused_and_never_runs(tmp_path, name):
    real_state(tmp_path)
    if os.path.exists(MARK):
        os.remove(MARK)
    torch.save({"state": Payload()}, tmp_path / name)
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / name}: refused to load: it holds more than tensors"):
        load_tensors(tmp_path / name)
    assert not os.path.exists(MARK)
