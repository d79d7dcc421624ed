"""Run guards: checks that stop a run before a broken step changes the model, or a broken model is saved.

Pure functions, called by the Ray Train loop and the RL learner step. Every rank sees the same global
values (the loss and gradient norm are all-reduced), so every rank stops at the same step and no
collective is left waiting.
"""

from __future__ import annotations

import math

import torch

from rayalign.errors import RunError


class NonFiniteError(RunError):
    """A loss, gradient norm or weight that is NaN or infinite (one argument, so it crosses Ray intact)."""


def check_step(step: int, **values: float) -> None:
    """Raise before the optimizer update when any of ``values`` (loss, grad_norm, ...) is not finite."""
    bad = [f"{name} is {value}" for name, value in values.items() if not math.isfinite(value)]
    if bad:
        raise NonFiniteError(f"step {step}: {', '.join(bad)}; stopped before the optimizer update (the weights are "
                             "those of the step before; a lower training.learning_rate or max_grad_norm may help)")


def check_weights(step: int, state: dict[str, torch.Tensor]) -> None:
    """Raise when a weight about to be saved is NaN or infinite, naming the first such tensor."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteError(f"step {step}: weight {name} holds NaN or inf; not saved")
