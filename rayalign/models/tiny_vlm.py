"""Tiny vision-language models: a real HF directory (model, tokenizer, processor) made locally (issue 17).

``create_tiny_vlm(out, arch="llava")`` writes a randomly initialised LLaVA: a 2-layer CLIP vision tower on
``image_size`` pixel images cut in ``patch`` pixel patches, a 2-layer projector into the language model's width,
and the text model of ``models/tiny.py`` (a Qwen2, head_dim 64, which vLLM's CPU attention takes). Its tokenizer
is the task-trained BPE of ``models/tiny.py`` trained on the visual tasks' text too, plus LLaVA's ``<image>``
token; the chat template puts ``<image>`` where a message has an image part, and the processor expands it to one
token per patch. It loads with ``AutoModelForImageTextToText`` and ``AutoProcessor``.

Qwen2-VL, the other family the issue names, is not offered: transformers 5 builds its processor with a video
processor that needs torchvision, and PyPI's torchvision wheels fail against the CPU torch this install uses
("operator torchvision::nms does not exist"; the Makefile removes them). LLaVA's processor has no video part.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (AutoModelForImageTextToText, CLIPVisionConfig, GenerationConfig, LlavaConfig,
                          LlavaProcessor, Qwen2Config)
# the PIL backend: the torchvision one needs torchvision, which this install leaves out (Makefile)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from rayalign.data.visual_tasks import VISUAL_TASKS, generate_visual
from rayalign.errors import UserError
from rayalign.models.tiny import BOS, HEAD_DIM, IM_END, PAD, check_sizes, train_tokenizer

IMAGE = "<image>"
VL_ARCHS = ("llava",)
# ChatML with image parts: a message's content is a string or a list of {"type": "text"|"image", ...} parts
VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def visual_corpus(n_per_task: int = 500, seed: int = 0) -> list[str]:
    """The visual tasks' prompts and answers, for the tokenizer."""
    return [f"{ex.prompt}\n{ex.solution}\n{ex.wrong}" for task in VISUAL_TASKS
            for ex in generate_visual(task, n_per_task, seed, size=28)]


def create_tiny_vlm(out: str | Path, arch: str = "llava", layers: int = 2, hidden: int = 128, vocab: int = 1024,
                    vision_layers: int = 2, vision_width: int = 64, image_size: int = 112, patch: int = 16,
                    seed: int = 0) -> Path:
    """Write a tiny random VLM with its processor to ``out``; images are resized to ``image_size`` squares."""
    if arch not in VL_ARCHS:
        raise UserError(f"--arch: vision-language architectures are {', '.join(VL_ARCHS)}, got '{arch}'")
    check_sizes("qwen2", hidden, vocab)
    if image_size % patch:
        raise UserError(f"--image-size must be a multiple of the patch size {patch}, got {image_size}")
    tokenizer = train_tokenizer(vocab, extra_texts=visual_corpus())
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE]})
    tokenizer.chat_template = VL_CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (BOS, IM_END, PAD, IMAGE)}
    text = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 4,
                       num_hidden_layers=layers, num_attention_heads=hidden // HEAD_DIM,
                       num_key_value_heads=hidden // HEAD_DIM, max_position_embeddings=2048,
                       bos_token_id=ids[BOS], eos_token_id=ids[IM_END], pad_token_id=ids[PAD], dtype="float32")
    vision = CLIPVisionConfig(hidden_size=vision_width, intermediate_size=vision_width * 2,
                              num_hidden_layers=vision_layers, num_attention_heads=vision_width // 32,
                              image_size=image_size, patch_size=patch, projection_dim=vision_width)
    tokens = (image_size // patch) ** 2  # "default" feature selection drops CLIP's class token
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=ids[IMAGE],
                         image_seq_length=tokens, vision_feature_layer=-1, vision_feature_select_strategy="default",
                         tie_word_embeddings=True, dtype="float32")
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config = GenerationConfig(bos_token_id=ids[BOS], eos_token_id=[ids[IM_END], ids[PAD]],
                                               pad_token_id=ids[PAD])
    square = {"height": image_size, "width": image_size}
    images = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size=square)
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=VL_CHAT_TEMPLATE)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
