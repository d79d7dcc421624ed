"""Running reward normalisation: the mean and std of every score a run has seen, merged batch by batch
(Chan et al.'s parallel variance update), so a reward model's scale and drift do not set the step size.
The state is three numbers, kept in checkpoints so a resumed run normalises as the straight one did."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class RunningMoments:
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean

    def update(self, values: list[float]) -> None:
        if not values:
            return
        n = len(values)
        mean = sum(values) / n
        m2 = sum((v - mean) ** 2 for v in values)
        delta, total = mean - self.mean, self.count + n
        self.m2 += m2 + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.count = total

    @property
    def std(self) -> float:
        """The unbiased std of the values seen; 1 until there are two."""
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def normalize(self, values: list[float]) -> list[float]:
        """``values`` folded in, then standardised by the moments that include them."""
        self.update(values)
        std = max(self.std, 1e-6)
        return [(v - self.mean) / std for v in values]

    def to_dict(self) -> dict:
        return asdict(self)
