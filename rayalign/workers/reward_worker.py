"""The reward worker: one Ray actor scoring samples with the configured reward functions, term by term, each
call bounded by ``reward.timeout_s`` (``workers/reward.py``'s pool owns the actors, the reward models and the
judge). Kept apart from the pool so its process imports only the reward functions, not torch or transformers
(~10 s of CPU per actor on a small machine)."""

from __future__ import annotations

import concurrent.futures as cf
import math
from dataclasses import dataclass, field
from typing import Any

from rayalign.config import RewardConfig
from rayalign.rewards.registry import WeightedReward


@dataclass
class Sample:
    prompt: Any                                   # the row's prompt (string or messages)
    completion: str
    metadata: dict = field(default_factory=dict)  # the row's other fields


@dataclass
class Scored:
    reward: float
    parts: dict[str, float]
    failures: list[str] = field(default_factory=list)  # "fn 'name' timed out after 10s" ...
    failed_terms: list[str] = field(default_factory=list)  # the term of each failure: a function name,
    #                                                         "judge" or "reward worker"

    @property
    def failed(self) -> bool:
        return bool(self.failures)


def describe(sample: Sample) -> str:
    text = sample.completion if len(sample.completion) < 80 else sample.completion[:77] + "..."
    return f"prompt {str(sample.prompt)[:80]!r}, completion {text!r}"


class RewardWorker:
    """One actor: scores samples term by term, each call bounded by ``timeout_s``."""

    def __init__(self, cfg: RewardConfig):
        self.reward, self.timeout = WeightedReward(cfg.functions), cfg.timeout_s
        self.threads = cf.ThreadPoolExecutor(max_workers=1)
        self.hung = False

    def ready(self) -> bool:
        return True

    def _call(self, fn, kwargs: dict, sample: Sample) -> tuple[float, str | None]:
        future = self.threads.submit(fn, sample.prompt, sample.completion, **{**sample.metadata, **kwargs})
        try:
            value = float(future.result(timeout=self.timeout))
            return (value, None) if math.isfinite(value) else (0.0, f"returned {value}")
        except cf.TimeoutError:
            self.hung = True  # the thread cannot be stopped: new calls get a fresh one, the owner restarts us
            self.threads = cf.ThreadPoolExecutor(max_workers=1)
            return 0.0, f"timed out after {self.timeout:g}s"
        except Exception as exc:  # a user function's bug must not end the run
            return 0.0, f"raised {type(exc).__name__}: {exc}"

    def score(self, samples: list[Sample]) -> tuple[list[Scored], bool]:
        """(scores, whether a call hung and this actor should be replaced)."""
        out = []
        for sample in samples:
            parts, failures, terms = {}, [], []
            for name, _, fn, kwargs in self.reward.terms:
                parts[name], problem = self._call(fn, kwargs, sample)
                if problem:
                    failures.append(f"reward fn '{name}' {problem} on {describe(sample)}")
                    terms.append(name)
            total = sum(w * parts[name] for name, w, _, _ in self.reward.terms)
            out.append(Scored(total, parts, failures, terms))
        return out, self.hung
