"""Reward models as reward terms (``reward.models``): each is a group of Ray actors holding a one-label
sequence classifier (``trainer: reward_model``'s output, checked by ``grpo.run`` before anything starts),
scoring a step's samples in batched forward passes on CPU or GPU. The samples split into contiguous chunks,
one per actor, and every model's actors start at once, so they score while the reward functions run.

Each completion is scored as the reward model was trained, with the reward model's own tokenizer
(``models/scoring.py``), so the policy and the reward model need not share a vocabulary. A model's term is
its raw score, or with ``normalize`` the score standardised by the run's running moments
(``rewards/running.py``), whose state the checkpoints keep. A reward model that dies or hangs stops the run
like the reference would, naming its actor (a learned reward cannot be skipped for some samples without
changing what the run optimises).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from rayalign.config import RewardModelConfig
from rayalign.models.scoring import ScoreModel
from rayalign.rewards.running import RunningMoments
from rayalign.workers.group import actor_names, answers, quiet_actor, spawn

STATE = "reward_models.json"  # the running moments, in each checkpoint


def term_names(models: list[RewardModelConfig]) -> list[str]:
    """Each model's metric name: its ``name``, else reward_model (reward_model_<i> among several)."""
    return [m.name or ("reward_model" if len(models) == 1 else f"reward_model_{i}") for i, m in enumerate(models)]


class RewardModelWorker:
    """One actor: a reward model (``models/scoring.py``); ``score`` returns one float per (prompt, completion)."""

    def __init__(self, cfg: RewardModelConfig):
        quiet_actor(cfg.torch_threads)
        self.model = ScoreModel(cfg.path, dtype=cfg.dtype, device="cuda" if cfg.num_gpus else "cpu",
                                max_length=cfg.max_length, batch_size=cfg.batch_size)

    def ready(self) -> bool:
        return True

    def score(self, pairs: list[tuple]) -> list[float]:
        return self.model.score(pairs)


class RewardModels:
    """Every ``reward.models`` entry's actors; ``start(pairs)`` sends a step's samples and returns the call
    that waits for the scores and gives each model's term (name -> one value per sample)."""

    def __init__(self, models: list[RewardModelConfig], run: str, deadline_s: float, start_timeout_s: float,
                 placed: Callable[[int], dict] = lambda i: {}):
        self.names, self.deadline = term_names(models), deadline_s
        self.weights = {name: m.weight for name, m in zip(self.names, models)}
        self.moments = {name: RunningMoments() for name, m in zip(self.names, models) if m.normalize}
        self.actors, self.actor_names, first = [], [], 0
        for name, m in zip(self.names, models):
            names = actor_names(run, f"reward-model-{name}", m.num_workers)
            self.actor_names.append(names)
            self.actors.append(spawn(RewardModelWorker, m.num_workers, role=f"reward model {name}",
                                     num_cpus=m.num_cpus, num_gpus=m.num_gpus, args=(m,),
                                     timeout_s=start_timeout_s, names=names,
                                     placed=[placed(first + k) for k in range(m.num_workers)]))
            first += m.num_workers

    def start(self, pairs: list[tuple]) -> Callable[[], dict[str, tuple[list[float], list[float]]]]:
        """Scores of ``pairs`` ((prompt, completion) each) begin now; the returned call waits for them and
        gives name -> (raw scores, the term's values: normalised when the model asks for it)."""
        calls = []
        for actors in self.actors:
            size = -(-len(pairs) // len(actors))
            calls.append([actor.score.remote(pairs[k * size:(k + 1) * size]) for k, actor in enumerate(actors)])

        def wait() -> dict[str, tuple[list[float], list[float]]]:
            out = {}
            for name, refs, names in zip(self.names, calls, self.actor_names):
                raw = [v for chunk in answers(refs, names, role="reward model", phase="reward",
                                              timeout_s=self.deadline) for v in chunk]
                out[name] = (raw, self.moments[name].normalize(raw) if name in self.moments else raw)
            return out

        return wait

    def state(self) -> dict[str, str]:
        """The checkpoint file of the running moments (none when no model normalises)."""
        return {STATE: json.dumps({n: m.to_dict() for n, m in self.moments.items()})} if self.moments else {}

    def restore(self, checkpoint: str | None) -> None:
        """The running moments as ``checkpoint`` holds them (None: a fresh run's)."""
        path = Path(checkpoint) / STATE if checkpoint else None
        saved = json.loads(path.read_text()) if path is not None and path.exists() else {}
        self.moments = {name: RunningMoments(**saved.get(name, {})) for name in self.moments}

    def shutdown(self) -> None:
        import ray

        for actors in self.actors:
            for actor in actors:
                ray.kill(actor)
