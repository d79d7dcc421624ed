"""Issue 13: the RL roles' placement group. separate: one bundle per actor, spread; colocate: learner i in
rollout worker i's bundle, packed; a group the cluster cannot place is one line naming what is free."""

import pytest

from rayalign.config_io import with_overrides
from rayalign.errors import UserError
from rayalign.placement import Placement
from rl_helpers import grpo_recipe


def placed(ray_local, cfg, run):
    """(the placement, its strategy, its bundles, learner 1's bundle index), the group removed."""
    from ray.util.placement_group import placement_group_table

    placement = Placement(cfg, run, timeout_s=30)
    try:
        table = placement_group_table(placement.group)
        learner_1 = placement.options("learner", len(placement.index["learner"]) - 1)["scheduling_strategy"]
        return (placement, table["strategy"], [table["bundles"][i] for i in sorted(table["bundles"])],
                learner_1.placement_group_bundle_index)
    finally:
        placement.remove()


def test_separate_gives_each_actor_its_bundle(ray_local, tiny_model_dir, tmp_path):
    cfg = grpo_recipe(tiny_model_dir, "p.jsonl", tmp_path / "out", learners=2)  # kl 0.05: a reference actor
    placement, strategy, bundles, last_learner = placed(ray_local, cfg, "sep")
    assert strategy == "SPREAD"
    assert bundles == [{"CPU": 0.5}, {"CPU": 0.5}, {"CPU": 0.5}, {"CPU": 0.25}, {"CPU": 0.25}]
    assert placement.index == {"rollout": [0], "learner": [1, 2], "reward": [3], "reference": [4]}
    assert last_learner == 2


def test_colocate_puts_learner_i_in_rollout_worker_is_bundle(ray_local, tiny_model_dir, tmp_path):
    cfg = grpo_recipe(tiny_model_dir, "p.jsonl", tmp_path / "out", learners=1, kl_coef=0.0)
    cfg = with_overrides(cfg, {"cluster.placement": "colocate", "scaling.cpus_per_worker": 0.75})
    placement, strategy, bundles, last_learner = placed(ray_local, cfg, "colo")
    assert strategy == "PACK"
    assert bundles == [{"CPU": 1.25}, {"CPU": 0.25}]  # rollout 0.5 + learner 0.75; reward
    assert placement.index == {"rollout": [0], "learner": [0], "reward": [1]} and last_learner == 0

    with pytest.raises(UserError, match=r"cluster.placement: colocate pairs rollout worker i with learner i; "
                                        r"rollout.num_workers \(1\) must equal scaling.num_workers \(2\)"):
        Placement(with_overrides(cfg, {"scaling.num_workers": 2, "scaling.cpus_per_worker": 0.25}), "bad")


def test_a_group_the_cluster_cannot_place_is_named(ray_local, tiny_model_dir, tmp_path):
    from ray.util.placement_group import placement_group, remove_placement_group

    held = placement_group([{"CPU": 1.5}])  # another job's actors
    assert held.wait(30)
    try:
        cfg = grpo_recipe(tiny_model_dir, "p.jsonl", tmp_path / "out", learners=1, kl_coef=0.0)
        with pytest.raises(UserError, match=r"the RL roles' placement group \(3 bundles\) was not placed within 3 s: "
                                            r"the cluster has 0.5 CPU / 0 GPU free"):
            Placement(cfg, "short", timeout_s=3)
    finally:
        remove_placement_group(held)
