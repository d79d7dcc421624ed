"""The sync check: after a learner update, an engine that did not get (all of) the new weights is caught."""

import pytest
import ray
import torch

from rayalign.data.collate import collate_rollout
from rayalign.weight_sync import WeightSyncError, verify
from rayalign.workers.roles import RLRoles

from rl_helpers import grpo_recipe, prompt_file


def test_unsent_or_partial_weights_fail_the_check(ray_local, tiny_model_dir, tiny_tokenizer, tmp_path):
    cfg = grpo_recipe(tiny_model_dir, prompt_file(tmp_path), tmp_path / "out", learners=1, kl_coef=0)
    roles = RLRoles(cfg, max_steps=2, max_model_len=96, restored=None)
    try:
        roles.sync()  # engine and learner agree at the start
        ids = tiny_tokenizer("How many 'a' in 'banana'?", add_special_tokens=False)["input_ids"]
        batch = collate_rollout([(ids, [5, 6, 7], [-7.0] * 3), (ids, [8, 9], [-7.0] * 2)], torch.tensor([1.0, -1.0]),
                                tiny_tokenizer.pad_token_id)
        assert roles.train(batch, step=0)["grad_norm"] > 0
        weights, (learner_fp, _) = ray.get(roles.learners[0].gather_weights.options(num_returns=2).remote())
        [worker] = roles.rollouts
        with pytest.raises(WeightSyncError, match=r"rollout worker 0: weight sync check failed"):
            verify({0: ray.get(worker.fingerprint.remote())}, learner_fp)  # the weights were never sent
        partial = [(name, t) for name, t in weights if "layers.1." not in name]
        with pytest.raises(WeightSyncError, match="not running the learner's weights"):
            verify({0: ray.get(worker.load_weights.remote(partial))[0]}, learner_fp)
        roles.sync()  # a full sync passes again
    finally:
        roles.shutdown()
