"""Issue 17: the tiny LLaVA of ``rayalign models create-tiny --arch llava`` is a real HF directory: it loads with
AutoModelForImageTextToText and AutoProcessor, its chat template places one image per image part and the
processor expands it to one token per patch, the image changes what the model says, and vLLM (CPU) loads it and
answers an image prompt greedily as transformers does."""

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from rayalign.data.visual_tasks import generate_visual, to_vl_row


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from rayalign.models.tiny_vlm import create_tiny_vlm

    return create_tiny_vlm(tmp_path_factory.mktemp("vlm") / "llava")


def _greedy(model, batch, n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, batch["input_ids"].shape[1]:].tolist()


def test_tiny_llava_loads_in_hf_and_vllm_and_they_answer_alike(tiny_vlm):
    processor = AutoProcessor.from_pretrained(tiny_vlm)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm).eval()
    a, b = generate_visual("shape_colour", 2, seed=0)
    prompt = processor.apply_chat_template(to_vl_row(a, "vl_prompt", "a.png")["prompt"], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == "<|im_start|>user\n<image>What colour is the square?<|im_end|>\n<|im_start|>assistant\n"
    batch = processor(text=[prompt], images=[a.image], return_tensors="pt")
    assert int((batch["input_ids"] == model.config.image_token_index).sum()) == (112 // 16) ** 2
    with torch.no_grad():
        logits_a = model(**batch).logits[0, -1]
        logits_b = model(**processor(text=[prompt], images=[b.image], return_tensors="pt")).logits[0, -1]
    assert (logits_a - logits_b).abs().max() > 1e-4  # the answer depends on the image
    expected = _greedy(model, batch, 8)

    from vllm import LLM, SamplingParams

    llm = LLM(model=str(tiny_vlm), dtype="float32", gpu_memory_utilization=0.2, max_model_len=256,
              enforce_eager=True, seed=0, limit_mm_per_prompt={"image": 1})
    try:
        [out] = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": a.image}}],
                             SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
        assert list(out.outputs[0].token_ids) == expected
    finally:
        del llm
