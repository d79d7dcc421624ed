"""CUDA path: the tiny model computes the same logits on GPU as on CPU. Skipped without CUDA."""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_tiny_model_on_cuda_matches_cpu(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.arange(1, 33)[None]
    with torch.no_grad():
        cpu = model(ids).logits
        gpu = model.cuda()(ids.cuda()).logits.cpu()
    assert torch.allclose(cpu, gpu, atol=1e-3)
