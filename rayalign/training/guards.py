"""Run guards: checks that stop a run before a broken step changes the model, or a broken model is saved.

Pure functions, called by the Ray Train loop and the RL learner step. Every rank sees the same global
values (the loss and gradient norm are all-reduced), so every rank stops at the same step and no
collective is left waiting.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

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


class RewardFailureError(RunError):
    """Reward functions failed on most samples for several steps: the run would train on nothing."""


@dataclass
class RewardFailures:
    """The reward-failure policy of an RL run. Each step's failures are counted per reward term; the first
    failure of a term is printed at once, then at most one line per term every ``report_every`` steps;
    more than ``max_share`` of a step's samples failing for ``patience`` steps in a row stops the run.
    ``scored``: objects with ``failures`` (messages) and ``failed_terms`` (the term of each)."""
    max_share: float
    patience: int
    report_every: int = 10
    totals: Counter = field(default_factory=Counter)
    reported: dict[str, int] = field(default_factory=dict)
    streak: int = 0

    def observe(self, step: int, scored: list) -> tuple[dict[str, float], list[str]]:
        """(this step's failures per term as metrics, lines to print); raises RewardFailureError."""
        now: Counter = Counter()
        example: dict[str, str] = {}
        for s in scored:
            for term, message in zip(s.failed_terms, s.failures):
                now[term] += 1
                example.setdefault(term, message)
        self.totals.update(now)
        lines = []
        for term, count in now.items():
            if term not in self.reported or step - self.reported[term] >= self.report_every:
                self.reported[term] = step
                lines.append(f"step {step}: reward {term} failed on {count} of {len(scored)} samples "
                             f"({self.totals[term]} so far), e.g. {example[term]}")
        failed = sum(bool(s.failures) for s in scored)
        self.streak = self.streak + 1 if scored and failed / len(scored) > self.max_share else 0
        if self.streak >= self.patience:
            worst = max(now, key=now.get)
            raise RewardFailureError(
                f"step {step}: rewards failed on more than {self.max_share:.0%} of the samples for {self.streak} "
                f"steps in a row (reward.max_failure_share, reward.failure_patience); {failed} of {len(scored)} "
                f"this step, e.g. {example[worst]}")
        return {f"reward_failures/{term}": float(count) for term, count in now.items()}, lines
