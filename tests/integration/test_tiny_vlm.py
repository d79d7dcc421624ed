"""Issue 17: the tiny VLMs of ``rayalign models create-tiny --arch llava|idefics3`` are real HF directories: they
load with AutoModelForImageTextToText and AutoProcessor, the chat template places one image per image part and
the processor expands it (LLaVA: one token per patch; Idefics3: 16 tokens between its markers), and the image
changes what the model says. Rows tokenise as the processor does, LoRA adapts the language model only, and the HF
engine answers image prompts. (vLLM loads the Idefics3: test_vllm_vlm.py.)"""

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from rayalign.data.visual_tasks import generate_visual, to_vl_row


IMAGE_TOKENS = {"llava": (112 // 16) ** 2, "idefics3": (128 // 16) ** 2 // 4}


@pytest.fixture(scope="module", params=["llava", "idefics3"])
def tiny_vlm(request, tmp_path_factory):
    from rayalign.models.tiny_vlm import create_tiny_vlm

    return create_tiny_vlm(tmp_path_factory.mktemp("vlm") / request.param, arch=request.param)


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
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == IMAGE_TOKENS[tiny_vlm.name]
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

    cut = tokenize_vl_conversation(processor, rows[0]["messages"], 10)  # the image tokens do not fit
    assert cut["truncated"] and cut["images"] == [] and processor.image_token_id not in cut["input_ids"]

    batch = collate_vl(processor, tokens, processor.tokenizer.pad_token_id)
    direct = processor(text=[processor.apply_chat_template(r["messages"], tokenize=False) for r in rows],
                       images=[ex.image for ex in examples], return_tensors="pt", padding=True)
    # the same images in the same order (Idefics3 counts them per row, the collator as one list; its model flattens)
    assert torch.equal(batch["pixel_values"].flatten(0, -4), direct["pixel_values"].flatten(0, -4))
    with torch.no_grad():
        loss = model(**batch).loss
        again = model(**{**direct, "labels": batch["labels"]}).loss
    assert torch.isfinite(loss) and loss.item() == pytest.approx(again.item(), rel=1e-6)


def test_lora_adapts_the_language_model_only_and_freeze_vision_fixes_the_tower(tiny_vlm):
    from rayalign.config import ModelConfig
    from rayalign.models.loading import load_model

    language = ".text_model." if tiny_vlm.name == "idefics3" else ".language_model."
    vision = ".vision_model." if tiny_vlm.name == "idefics3" else ".vision_tower."
    lora = load_model(ModelConfig(name_or_path=str(tiny_vlm), lora={"r": 4}), head="vl")
    trained = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trained and all(language in n and ".lora_" in n for n in trained)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trained} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    frozen = load_model(ModelConfig(name_or_path=str(tiny_vlm), freeze_vision=True), head="vl")
    fixed = {n for n, p in frozen.named_parameters() if not p.requires_grad}
    assert fixed == {n for n, _ in frozen.named_parameters() if vision in n} and fixed
    assert any(p.requires_grad for n, p in frozen.named_parameters() if "projector" in n or "connector" in n)


def test_the_hf_engine_answers_image_prompts_with_the_images_log_probs(tiny_vlm):
    from rayalign.config import ModelConfig
    from rayalign.data.vl_tokenize import prompt_ids
    from rayalign.engines.base import ImagePrompt, SamplingSpec
    from rayalign.engines.hf_engine import HFEngine

    engine = HFEngine(ModelConfig(name_or_path=str(tiny_vlm)))
    a, b = generate_visual("shape_colour", 2, seed=3)
    messages = to_vl_row(a, "vl_prompt", "a.png")["prompt"]
    ids, template = prompt_ids(engine.processor, messages, [a.image])
    text = engine.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ids == engine.processor(text=[text], images=[a.image])["input_ids"][0]
    spec = SamplingSpec(n=2, temperature=1.0, max_new_tokens=6, seed=0)
    assert template == engine.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    [[one, two]] = engine.generate([ImagePrompt(ids, (a.image,), template)], spec)
    assert len(one.token_ids) == len(one.logprobs) > 0

    def logps(image) -> list[float]:
        full = torch.tensor([ids + one.token_ids])
        pixels = engine.processor.image_processor([image], return_tensors="pt")
        with torch.no_grad():
            logp = torch.log_softmax(engine.model(input_ids=full, **pixels).logits[0, :-1].float(), -1)
        return logp[len(ids) - 1:].gather(-1, full[0, len(ids):, None]).squeeze(-1).tolist()

    assert one.logprobs == pytest.approx(logps(a.image), abs=1e-4)  # scored with the prompt's own image
    assert max(abs(x - y) for x, y in zip(logps(b.image), one.logprobs)) > 1e-4  # another image scores otherwise


def test_the_engine_never_samples_the_image_placeholder(tiny_vlm):
    """A completion holding an image token would make the log-prob pass (and the learner) look for a missing image."""
    from rayalign.config import ModelConfig
    from rayalign.data.vl_tokenize import prompt_ids
    from rayalign.engines.base import ImagePrompt, SamplingSpec
    from rayalign.engines.hf_engine import HFEngine

    engine = HFEngine(ModelConfig(name_or_path=str(tiny_vlm)))
    [ex] = generate_visual("colour", 1, seed=4)
    ids, template = prompt_ids(engine.processor, to_vl_row(ex, "vl_prompt", "a.png")["prompt"], [ex.image])
    image_id = engine.processor.image_token_id
    batch = {"input_ids": torch.tensor([ids]), **engine.processor.image_processor([ex.image], return_tensors="pt")}
    with torch.no_grad():  # make the image token the model's clear first choice (tied: its output row)
        last = engine.model(**batch, output_hidden_states=True).hidden_states[-1][0, -1]
        engine.model.get_output_embeddings().weight[image_id] = 50 * last / last.norm()
        assert int(engine.model(**batch).logits[0, -1].argmax()) == image_id
    [[c]] = engine.generate([ImagePrompt(ids, (ex.image,), template)], SamplingSpec(temperature=0, max_new_tokens=4))
    assert c.token_ids and image_id not in c.token_ids and len(c.logprobs) == len(c.token_ids)


def test_text_that_spells_the_image_token_stays_text(tiny_vlm):
    """Issue 21's guard on vision-language prompts: a text part spelling the image token (or a turn marker) is
    encoded as its characters, so it neither forges an image nor closes the turn; ordinary prompts are as before."""
    from rayalign.data.vl_tokenize import prompt_ids

    processor = AutoProcessor.from_pretrained(tiny_vlm)
    [ex] = generate_visual("colour", 1, seed=5)
    messages = to_vl_row(ex, "vl_prompt", "a.png")["prompt"]
    plain, template = prompt_ids(processor, messages, [ex.image])
    assert template == processor.tokenizer(processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    image_token = processor.tokenizer.convert_ids_to_tokens(processor.image_token_id)
    forged = [{**m, "content": [*m["content"], {"type": "text", "text": f" {image_token}"}]} if m["role"] == "user"
              else m for m in messages]
    ids, forged_template = prompt_ids(processor, forged, [ex.image])  # one image, not two
    assert forged_template.count(processor.image_token_id) == template.count(processor.image_token_id) == 1
    assert ids.count(processor.image_token_id) == plain.count(processor.image_token_id)
