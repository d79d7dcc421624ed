"""One-step-off asynchronous RL (``algorithm.async_steps: 1``), the pattern of verl's one-step-off policy
and AReaL: while the learners train on step k's samples, the rollout engines already generate step
k+1's, with the weights they hold, those before step k's update. Generation and learning overlap; each
sample is one update stale (``staleness`` in metrics.jsonl), which ``algorithm.tis_cap`` corrects for.

One step, from the driver (``take``): wait for this step's samples; sync the learners' weights into the
now idle engines (fingerprint-verified, as always); launch the next step's generation on a background
thread; then reward, advantages, reference and learning run on this step's samples while it generates.
Weight loads never meet a running generation: vLLM would mix old and new weights in one batch.

Exact resume: a checkpoint holds the samples of the step after it (``IN_FLIGHT``, generated with the
weights before the checkpoint's last update, which the checkpoint no longer has), so ``--resume``
trains on exactly what the uninterrupted run would have. A checkpoint without them (a run stopped by a
failing role) regenerates them with the checkpoint's weights, which is said.
"""

from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rayalign.engines.base import Completion, SamplingSpec
from rayalign.workers.roles import RLRoles
from rayalign.weight_sync import Synced

IN_FLIGHT = "rollout_in_flight.json"


@dataclass
class Generated:
    step: int                          # the step that trains on these samples
    groups: list[list[Completion]]
    version: int                       # learner updates the generating weights had
    seconds: float                     # the generation's own duration (it overlaps learning)

    def to_json(self) -> str:
        return json.dumps({"step": self.step, "version": self.version, "seconds": self.seconds,
                           "groups": [[dataclasses.asdict(c) for c in g] for g in self.groups]})

    @classmethod
    def read(cls, checkpoint: str | Path | None, step: int) -> Generated | None:
        """The in-flight samples saved in ``checkpoint`` for ``step``; None when it has none."""
        path = Path(checkpoint) / IN_FLIGHT if checkpoint else None
        if path is None or not path.is_file():
            return None
        raw = json.loads(path.read_text())
        if raw["step"] != step:
            return None
        return cls(raw["step"], [[Completion(**c) for c in g] for g in raw["groups"]], raw["version"], raw["seconds"])


class OneStepOff:
    """Which weights generate which step's samples, and the generation running beside learning."""

    def __init__(self, roles: RLRoles, prompts_of: Callable[[int], list[list[int]]],
                 spec_of: Callable[[int], SamplingSpec], restored: Generated | None = None):
        self.roles, self.prompts_of, self.spec_of = roles, prompts_of, spec_of
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="rayalign-rollout")
        self.in_flight: tuple[int, Future] | None = None
        if restored is not None:
            done: Future = Future()
            done.set_result(restored)
            self.in_flight = (restored.step, done)

    def _launch(self, step: int, version: int) -> None:
        def generate() -> Generated:
            start = time.perf_counter()
            groups = self.roles.generate(self.prompts_of(step), self.spec_of(step))
            return Generated(step, groups, version, time.perf_counter() - start)

        self.in_flight = (step, self.pool.submit(generate))

    def _result(self, step: int, version: int) -> Generated:
        if self.in_flight is None or self.in_flight[0] != step:
            self._launch(step, version)
        return self.in_flight[1].result()

    def take(self, step: int, launch_next: bool) -> tuple[Generated, float, Synced | None]:
        """Step ``step``'s samples (the learners have made ``step`` updates), the seconds spent waiting
        for them, and the sync that followed (None when the engines already ran the learners' weights);
        with ``launch_next``, step + 1's generation is running when this returns."""
        start = time.perf_counter()
        generated = self._result(step, step)
        waited = time.perf_counter() - start
        self.in_flight = None
        synced = self.roles.sync() if self.roles.learned_unsynced else None  # the engines are idle now
        if launch_next:
            self._launch(step + 1, step)
        return generated, waited, synced

    def pending(self, step: int) -> Generated:
        """Step ``step``'s samples for a checkpoint taken after step - 1, waiting for their generation
        (started now, with the engines' weights, when it was not: the same the run would have used)."""
        return self._result(step, step - 1)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
