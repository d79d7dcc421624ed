"""Rollout workers as Ray actors: a vLLM engine inside an actor generates with log-probs and takes new
weights (fingerprint checked); a role that cannot be placed fails with its name instead of hanging."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rayalign.config import ModelConfig, RolloutConfig
from rayalign.engines.base import SamplingSpec, check_sync, sync_fingerprint
from rayalign.engines.hf_engine import unique_tensors
from rayalign.workers.group import PlacementError, spawn
from rayalign.workers.rollout import RolloutWorker


def test_vllm_rollout_actor_generates_and_syncs(ray_local, tiny_model_dir, tiny_tokenizer):
    cfg = RolloutConfig(engine="vllm", num_cpus=0.5)
    [worker] = spawn(RolloutWorker, 1, role="rollout worker", num_cpus=cfg.num_cpus,
                     args=(ModelConfig(name_or_path=str(tiny_model_dir)), cfg, 256, 0), timeout_s=300)
    try:
        prompt = tiny_tokenizer("<|im_start|>user\nHow many 'r' in 'berry'?<|im_end|>\n<|im_start|>assistant\n",
                                add_special_tokens=False)["input_ids"]
        [group] = ray_local.get(worker.generate.remote([prompt], SamplingSpec(n=2, max_new_tokens=8, seed=3)))
        assert len(group) == 2 and all(len(c.logprobs) == len(c.token_ids) >= 1 for c in group)
        hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        check_sync(ray_local.get(worker.fingerprint.remote()), sync_fingerprint(unique_tensors(hf), 0))
        with torch.no_grad():
            for p in hf.parameters():
                p.mul_(1.01)
        engine_fp, seconds = ray_local.get(worker.load_weights.remote(list(hf.state_dict().items()), 3))
        check_sync(engine_fp, sync_fingerprint(unique_tensors(hf), 3))
        assert set(seconds) == {"load_s", "engine_check_s"} and all(s > 0 for s in seconds.values())
    finally:
        ray_local.kill(worker)


def test_unplaceable_role_is_named(ray_local):
    with pytest.raises(PlacementError, match=r"learner: 1 of 1 actors not started within 2s; each asks for 8 CPU"):
        spawn(RolloutWorker, 1, role="learner", num_cpus=8, args=(None, None, 0, 0), timeout_s=2)
