"""The RL learner's CUDA path in one process, without Ray: the HF engine samples on the GPU, the policy is
sharded with FSDP2 (``fully_shard`` over a one-rank nccl group) and takes a GRPO step that matches the same
step unsharded on CPU; the gathered weights load into the engine with a matching fingerprint, and a
checkpoint (model + full optimizer state) is written and loads. Skipped without CUDA."""

import shutil
import socket

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture()
def nccl_group():
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_fsdp2_grpo_step_on_cuda_matches_cpu(tiny_model_dir, nccl_group, monkeypatch, report):
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM

    from rayalign.checkpoint import MODEL, TrainerState
    from rayalign.config import AlgorithmConfig, ModelConfig, ScalingConfig, TrainingConfig
    from rayalign.data.collate import collate_rollout
    from rayalign.engines.base import SamplingSpec, check_sync, sync_fingerprint
    from rayalign.engines.build import build_engine
    from rayalign.training import sharding
    from rayalign.training.loop import build_trainable, write_checkpoint
    from rayalign.training.rl_step import PolicyLearner
    from rayalign.workers.learner import fingerprinted

    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    engine = build_engine("hf", cfg, max_model_len=None)
    assert engine.device.type == "cuda"
    tok = engine.tokenizer
    prompts = [tok(f"How many 'r' in '{w}'?", add_special_tokens=False)["input_ids"] for w in ("strawberry", "cherry")]
    groups = engine.generate(prompts, SamplingSpec(n=4, max_new_tokens=12, seed=3))
    batch = collate_rollout([(p, c.token_ids, c.logprobs) for p, g in zip(prompts, groups) for c in g],
                            torch.tensor([1.0, -1.0, 0.5, -0.5] * 2), tok.pad_token_id)
    training = TrainingConfig(learning_rate=1e-3, lr_scheduler="constant", micro_batch_size=4)
    algorithm = AlgorithmConfig(name="grpo", kl_coef=0)

    def one_step(device: torch.device, shard: bool):
        with monkeypatch.context() as m:
            if shard:  # wrap() leaves a one-rank group unwrapped; here FSDP2 is the point
                m.setattr(sharding, "world", lambda: (0, 2))
            strategy, _ = build_trainable(cfg, training, ScalingConfig(use_gpu=device.type == "cuda"), 4, None,
                                          device)
        learner = PolicyLearner(strategy, algorithm, 12, training.micro_batch_size, training.max_grad_norm,
                                training.seed, device)
        return strategy, learner.train_step(batch, 0)

    strategy, gpu = one_step(torch.device("cuda", 0), shard=True)
    model = strategy.model
    assert isinstance(next(model.parameters()), DTensor)
    cpu_strategy, cpu = one_step(torch.device("cpu"), shard=False)
    cpu_model = cpu_strategy.model
    assert gpu["loss"] == pytest.approx(cpu["loss"], abs=1e-5)
    assert gpu["grad_norm"] == pytest.approx(cpu["grad_norm"], rel=1e-4)
    assert gpu["mismatch_kl"] < 1e-5  # the engine sampled with the learner's weights, both on the GPU
    state = strategy.full_model_state()
    assert all(t.device.type == "cpu" for t in state.values())
    cpu_state = cpu_model.state_dict()
    diff = max((state[k] - cpu_state[k]).abs().max().item() for k in state)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    moved = max((state[k] - initial[k]).abs().max().item() for k in state)
    assert diff < 1e-4 < moved

    engine.load_weights(state.items())
    check_sync(engine.fingerprint(), sync_fingerprint(fingerprinted(model, state), 0))
    tmp = write_checkpoint(cfg, strategy, TrainerState(step=1), tok, 0, {})
    try:
        saved = AutoModelForCausalLM.from_pretrained(tmp / MODEL).state_dict()
        assert torch.equal(saved["model.layers.0.mlp.up_proj.weight"], state["model.layers.0.mlp.up_proj.weight"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(gpu_loss=gpu["loss"], cpu_loss=cpu["loss"], gpu_mismatch_kl=gpu["mismatch_kl"],
           max_weight_diff_gpu_vs_cpu=diff, max_update=moved)
