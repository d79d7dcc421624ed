"""The learner -> engine weight buffer is a safetensors file image, and the sync fingerprint's probe."""

import pytest
import safetensors.torch
import torch

from rayalign.engines.base import probe, sync_fingerprint, weights_fingerprint
from rayalign.engines.flat_weights import FlatWeights


def test_buffer_is_a_safetensors_file_and_views_read_it_back(tmp_path):
    embed = torch.randn(7, 3)
    weights = {"norm": torch.randn(5, dtype=torch.float64), "embed": embed, "lm_head": embed,  # tied: both names
               "half": torch.randn(3).to(torch.bfloat16), "odd": torch.arange(3, dtype=torch.int16),
               "empty": torch.zeros(0, 4)}
    flat = FlatWeights.pack(weights.items())
    flat.write(tmp_path / "w.safetensors")
    for loaded in (safetensors.torch.load_file(tmp_path / "w.safetensors"), dict(flat)):
        assert set(loaded) == set(weights)
        for name, t in weights.items():
            assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name
    header = int.from_bytes(flat.buffer[:8].tobytes(), "little")
    assert (8 + header) % 8 == 0  # data 8-byte aligned, tensors largest element first: views need no copy
    assert [dtype for _, dtype, _, _ in flat.index][:1] == [torch.float64]


def test_probe_reads_a_moving_block_of_columns():
    w = torch.arange(2 * 100, dtype=torch.float32).view(2, 100)
    assert torch.equal(probe(w, 0), w[:, :64])
    assert torch.equal(probe(w, 1), w[:, list(range(64, 100)) + list(range(0, 28))])  # wraps around
    bias = torch.randn(100)
    assert probe(bias, 3) is bias  # 1-D weights are read whole
    small = torch.randn(4, 8)
    assert torch.equal(probe(small, 5), small)  # fewer columns than a block: all of them
    # rows fused into one matrix (q/k/v -> qkv) give the same fingerprint as the parts
    q, k = torch.randn(6, 100), torch.randn(2, 100)
    assert sync_fingerprint([torch.cat([q, k])], 2) == pytest.approx(weights_fingerprint([probe(q, 2), probe(k, 2)]),
                                                                      rel=1e-12)


def test_learner_sends_weights_cast_to_the_engines_dtype_and_fingerprints_them_as_cast(tiny_model_dir):
    """rollout.dtype bfloat16: the buffer holds bf16 tensors, and the fingerprint is of those (what a bf16
    engine reads back), not of the learner's float32 weights."""
    from rayalign.config import AlgorithmConfig, ModelConfig, ScalingConfig, TrainingConfig
    from rayalign.workers.learner import LearnerWorker

    learner = LearnerWorker(1, ScalingConfig(torch_threads=torch.get_num_threads()))  # leave the process as it is
    learner.setup(0, "", ModelConfig(name_or_path=str(tiny_model_dir)), TrainingConfig(max_steps=1),
                  AlgorithmConfig(name="grpo", kl_coef=0.0), 8, 1, None, False)
    full, (full_fp, _) = learner.gather_weights(3)
    cast, (cast_fp, _) = learner.gather_weights(3, "bfloat16")
    full, cast = dict(full), dict(cast)
    assert set(cast) == set(full) and {t.dtype for t in cast.values()} == {torch.bfloat16}
    assert all(torch.equal(cast[k], full[k].to(torch.bfloat16)) for k in full)
    params = [cast[name] for name, _ in learner.learner.model.named_parameters()]
    assert cast_fp == sync_fingerprint(params, 3) and cast_fp != full_fp
