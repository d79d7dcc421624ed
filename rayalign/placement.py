"""Where the online-RL roles run: each role's bundles (the CPUs and GPUs of one actor), the one check of
what the roles ask against what the cluster has, and the Ray placement group they start in.

``cluster.placement``:

- ``separate`` (default): every actor its own bundle, spread over the nodes (strategy SPREAD), so roles
  do not compete for one node's CPUs or GPUs.
- ``colocate``: learner rank i and rollout worker i share one bundle, packed on as few nodes as possible
  (strategy PACK). On GPUs they split one GPU: the engine takes ``rollout.num_gpus`` of it, the learner the
  rest, and the weight sync stays on the node. Needs ``rollout.num_workers == scaling.num_workers``.

Reward workers, reward-model actors, the reference actor and PPO's critic are bundles of their own either way; a judge's Serve app is placed
by Serve. Inside a Tune trial the roles ride in the trial's own placement group (Tune reserved it from
:func:`resource_asks`), so no group is made here.
"""

from __future__ import annotations

import ray
from ray.util.placement_group import get_current_placement_group, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rayalign.config import JudgeConfig, RecipeConfig
from rayalign.errors import UserError

KEYS = {"CPU": "rollout.num_cpus, scaling.cpus_per_worker, reference.num_cpus, reward.num_cpus, "
               "reward.models[].num_cpus, critic.cpus_per_worker, judge serve.num_cpus",
        "GPU": "rollout.num_gpus, scaling.use_gpu, reward.models[].num_gpus, judge serve.num_gpus"}


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {})}


def role_bundles(cfg: RecipeConfig) -> dict[str, list[dict[str, float]]]:
    """role -> one bundle per actor."""
    s, r = cfg.scaling, cfg.rollout
    learner_gpu = 0.0 if not s.use_gpu else (1 - r.num_gpus if cfg.cluster.placement == "colocate" else 1.0)
    out = {"rollout": [_bundle(r.num_cpus, r.num_gpus)] * r.num_workers,
           "learner": [_bundle(s.cpus_per_worker, learner_gpu)] * s.num_workers}
    if cfg.reward.functions:
        out["reward"] = [_bundle(cfg.reward.num_cpus, 0)] * cfg.reward.num_workers
    if cfg.reward.models:  # every model's actors in turn
        out["reward_model"] = [_bundle(m.num_cpus, m.num_gpus) for m in cfg.reward.models for _ in range(m.num_workers)]
    if cfg.algorithm.kl_coef > 0 and not cfg.reference.colocate:
        out["reference"] = [_bundle(cfg.reference.num_cpus, 0)]
    if cfg.algorithm.name == "ppo":
        out["critic"] = [_bundle(cfg.critic.cpus_per_worker, 1.0 if s.use_gpu else 0)] * cfg.critic.num_workers
    return out


def resource_asks(cfg: RecipeConfig, judge: JudgeConfig | None = None) -> dict[str, tuple[float, float]]:
    """role -> (CPUs, GPUs) it reserves in total (the judge's Serve replicas included)."""
    asks = {role: (sum(b["CPU"] for b in bs), sum(b.get("GPU", 0) for b in bs))
            for role, bs in role_bundles(cfg).items()}
    if judge is not None and judge.model is not None:
        replicas = judge.serve.start_replicas
        asks["judge"] = (replicas * judge.serve.num_cpus, replicas * judge.serve.num_gpus)
    return asks


def check_resources(cfg: RecipeConfig, judge: JudgeConfig | None = None) -> None:
    """The roles' total asks against the cluster's totals, one line naming each role's share."""
    asks, have = resource_asks(cfg, judge), ray.cluster_resources()
    for i, kind in enumerate(("CPU", "GPU")):
        need = sum(a[i] for a in asks.values())
        if need > have.get(kind, 0) + 1e-9:
            listed = ", ".join(f"{role} {a[i]:g}" for role, a in asks.items() if a[i])
            raise UserError(f"the RL roles ask for {need:g} {kind} ({listed}) but the Ray cluster has "
                            f"{have.get(kind, 0):g}; lower {KEYS[kind] if kind == 'CPU' else 'the GPU asks'}")


class Placement:
    """The roles' placement group: ``options(role, i)`` places actor i of ``role`` in its bundle."""

    def __init__(self, cfg: RecipeConfig, run: str, judge: JudgeConfig | None = None, timeout_s: float = 120.0):
        check_resources(cfg, judge)
        self.bundles = role_bundles(cfg)
        colocate = cfg.cluster.placement == "colocate"
        if colocate and cfg.rollout.num_workers != cfg.scaling.num_workers:
            raise UserError(f"cluster.placement: colocate pairs rollout worker i with learner i; rollout.num_workers "
                            f"({cfg.rollout.num_workers}) must equal scaling.num_workers ({cfg.scaling.num_workers})")
        flat: list[dict[str, float]] = []
        self.index: dict[str, list[int]] = {}
        for role, bundles in self.bundles.items():
            if colocate and role == "learner":  # into the rollout workers' bundles, rank by rank
                self.index[role] = list(self.index["rollout"])
                for i, b in zip(self.index[role], bundles):
                    flat[i] = {k: flat[i].get(k, 0) + b.get(k, 0) for k in {*flat[i], *b}}
                continue
            self.index[role] = list(range(len(flat), len(flat) + len(bundles)))
            flat += [dict(b) for b in bundles]
        self.group = None
        if get_current_placement_group() is None:  # not inside a Tune trial's own group
            self.group = placement_group(flat, strategy="PACK" if colocate else "SPREAD", name=f"rayalign:{run}:roles")
            if not self.group.wait(timeout_seconds=timeout_s):
                remove_placement_group(self.group)
                free = ray.available_resources()
                raise UserError(f"the RL roles' placement group ({len(flat)} bundles) was not placed within "
                                f"{timeout_s:g} s: the cluster has {free.get('CPU', 0):g} CPU / {free.get('GPU', 0):g} "
                                "GPU free (other jobs or Serve apps hold the rest), or no node fits a bundle")

    def options(self, role: str, i: int) -> dict:
        """Ray actor options placing actor ``i`` of ``role`` in its bundle (none inside a Tune trial)."""
        if self.group is None:
            return {}
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            self.group, placement_group_bundle_index=self.index[role][i])}

    def gpus(self, role: str) -> float:
        return self.bundles[role][0].get("GPU", 0.0) if self.bundles.get(role) else 0.0

    def remove(self) -> None:
        if self.group is not None:
            remove_placement_group(self.group)
            self.group = None
