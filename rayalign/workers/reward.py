"""Reward workers: a pool of Ray actors scoring completions with the configured reward functions, the
reward models' terms (``reward.models``, their own actors: ``workers/reward_model.py``, scoring meanwhile)
and the LLM judge's term (``reward.judge``), asked from here in one concurrent batch per step.

Every call of a reward function runs under ``reward.timeout_s``: a function that raises, hangs, kills
its process or returns NaN/inf is reported with its name and the sample, its samples count as failed
(reward 0 for that term, ``failed`` set), and the run goes on; ``training.guards.RewardFailures`` decides
when failures are too many to go on. A hung call leaves its thread behind, so the actor that ran
it is replaced; a dead actor is replaced too, and the new one scores the dead one's samples again.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import ray

from rayalign.config import RewardConfig
from rayalign.judge.dataset import as_text
from rayalign.judge.judge import Judge, JudgeItem
from rayalign.judge.parsers import unit_value
from rayalign.rewards.registry import WeightedReward
from rayalign.workers.group import actor_names, spawn
from rayalign.workers.reward_model import RewardModels
from rayalign.workers.reward_worker import RewardWorker, Sample, Scored, describe


class RewardPool:
    """``reward.num_workers`` actors at ``reward.num_cpus`` each; ``score`` splits samples across them
    (no actors when there are no reward functions), adds the reward models' terms (``models``, which score
    meanwhile), then the judge's term when there is a judge."""

    def __init__(self, cfg: RewardConfig, judge: Judge | None = None, start_timeout_s: float = 60.0,
                 run: str | None = None, placed: Callable[[int], dict] = lambda i: {},
                 models: RewardModels | None = None):
        WeightedReward(cfg.functions)  # unknown names / imports fail here, as one line, before any actor
        self.cfg, self.judge, self.start_timeout, self.run, self.placed = cfg, judge, start_timeout_s, run, placed
        self.models = models
        self.restarts = 0
        # 'module:fn' rewards import in the actors as they do here: same Python path (on a cluster, ship
        # the module with the job's runtime_env working_dir / py_modules)
        self.runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
        self.actors = [self._spawn(i) for i in range(cfg.num_workers)] if cfg.functions else []

    def _spawn(self, index: int):
        names = actor_names(self.run, "reward", 1, index, self.restarts) if self.run else None
        return spawn(RewardWorker, 1, role="reward worker", num_cpus=self.cfg.num_cpus, args=(self.cfg,),
                     runtime_env=self.runtime_env, timeout_s=self.start_timeout, names=names,
                     placed=[self.placed(index)])[0]

    def _replace(self, index: int) -> None:
        ray.kill(self.actors[index])
        self.restarts += 1
        self.actors[index] = self._spawn(index)

    def score(self, samples: list[Sample]) -> list[Scored]:
        models = self.models.start([(s.prompt, s.completion) for s in samples]) if self.models else None
        scored = self._functions(samples) if self.actors else [Scored(0.0, {}) for _ in samples]
        if models is not None:  # a term's part is the model's raw score; the sum takes its (normalised) value
            for name, (raw, values) in models().items():
                for out, score, value in zip(scored, raw, values):
                    out.parts[name] = score
                    out.reward += self.models.weights[name] * value
        if self.judge is not None:
            self._add_judge(samples, scored)
        return scored

    def _add_judge(self, samples: list[Sample], scored: list[Scored]) -> None:
        items = [JudgeItem(prompt=as_text(s.prompt), response=s.completion,
                           reference=None if s.metadata.get("answer") is None else str(s.metadata["answer"]))
                 for s in samples]
        for sample, out, verdict in zip(samples, scored, self.judge.score(items)):
            out.parts["judge"] = unit_value(self.judge.parser, verdict.score)
            out.reward += self.cfg.judge_weight * out.parts["judge"]
            if verdict.score is None:
                out.failures.append(f"reward judge: {verdict.error} on {describe(sample)}")
                out.failed_terms.append("judge")

    def _functions(self, samples: list[Sample]) -> list[Scored]:
        chunks = [samples[i::len(self.actors)] for i in range(len(self.actors))]
        refs = [actor.score.remote(chunk) for actor, chunk in zip(self.actors, chunks)]
        # a whole chunk may take at most every term of every sample hitting its timeout, plus slack
        limit = self.cfg.timeout_s * max(1, len(self.cfg.functions)) * max(len(c) for c in chunks) + 30
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=limit)
        results: list[list[Scored]] = []
        for i, (ref, chunk) in enumerate(zip(refs, chunks)):
            try:
                scored, hung = self._answer(ref, ref in done, chunk, limit)
            except ray.exceptions.RayActorError:  # the worker died: a new one scores its chunk again
                self._replace(i)
                retry = self.actors[i].score.remote(chunk)
                ready, _ = ray.wait([retry], timeout=limit)
                try:
                    scored, hung = self._answer(retry, bool(ready), chunk, limit)
                except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError, TimeoutError) as exc:
                    scored, hung = self._failed(i, chunk, exc), True
            except (ray.exceptions.RayTaskError, TimeoutError) as exc:
                scored, hung = self._failed(i, chunk, exc), True
            if hung:
                self._replace(i)
            results.append(scored)
        out: list[Scored] = [None] * len(samples)  # type: ignore[list-item]
        for i, scored in enumerate(results):
            out[i::len(self.actors)] = scored
        return out

    @staticmethod
    def _answer(ref, ready: bool, chunk: list[Sample], limit: float) -> tuple[list[Scored], bool]:
        scored, hung = ray.get(ref, timeout=0) if ready else ([], True)
        if len(scored) != len(chunk):
            raise TimeoutError(f"no answer within {limit:g}s")
        return scored, hung

    @staticmethod
    def _failed(index: int, chunk: list[Sample], exc: Exception) -> list[Scored]:
        reason = str(exc).splitlines()[0][:200]
        return [Scored(0.0, {}, [f"reward worker {index} failed ({reason}) on {describe(s)}"], ["reward worker"])
                for s in chunk]

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        if self.models is not None:
            self.models.shutdown()
