"""Tokenising vision-language conversations (``vl_sft``) for training, and collating them (issue 17).

The conversation renders through the processor's chat template, which writes one image token per image part;
assistant-only labels come from the same prefix rendering as text SFT (``data.tokenize.assistant_spans``). Each
image token is then expanded to the number of tokens the processor gives that image (its size, read from the
file's header), so the ids equal what ``processor(text, images)`` makes, without decoding any image on the
driver. Rows keep their image references; the collator on the worker opens them and runs the image processor.
Truncation never splits an image: a cut inside an image's tokens moves to before them, and images past the cut
are dropped with their tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from rayalign.batch import VLSFTBatch
from rayalign.data import images as image_refs
from rayalign.data.collate import forged_spans, guarded_ids
from rayalign.data.formats import image_parts
from rayalign.data.tokenize import IGNORE, assistant_spans


# (id(processor), width, height) -> (the processor, its ids): the processor is kept so its id is never reused by
# another one (a freed processor's address can be given to the next; its expansions would then be read as theirs)
_EXPANSIONS: dict[tuple[int, int, int], tuple[Any, list[int]]] = {}


def image_tokens(processor, image: str | Image.Image, max_side: int | None = None) -> list[int]:
    """The ids the processor puts where the chat template wrote one image token, for ``image`` (a reference: only
    its header is read) fitted to ``max_side``: LLaVA's one token per patch, Idefics3's tokens around them too.
    They depend on the image's size only, so the processor runs once per size, on a blank image."""
    if isinstance(image, Image.Image):
        width, height = image_refs.fitted_size(image.width, image.height, max_side)
    else:
        with Image.open(image_refs.source(image)) as opened:  # the header only: no pixels decoded
            width, height = image_refs.fitted_size(opened.width, opened.height, max_side)
    key = (id(processor), width, height)
    if key not in _EXPANSIONS:
        token = processor.tokenizer.convert_ids_to_tokens(processor.image_token_id)
        _EXPANSIONS[key] = (processor, processor(text=[token], images=[Image.new("RGB", (width, height))],
                                                 add_special_tokens=False)["input_ids"][0])
    return list(_EXPANSIONS[key][1])


def prompt_ids(processor, messages: list[dict], images: list[Image.Image]) -> tuple[list[int], list[int]]:
    """A vision-language prompt (messages whose image parts stand for ``images``, in order) as the ids the model
    reads: the chat template with the generation prompt, each image token expanded to that image's tokens; and
    the same ids unexpanded, one image token per image (what vLLM takes: it expands them itself)."""
    tokenizer, image_id = processor.tokenizer, processor.image_token_id
    render = processor if getattr(processor, "chat_template", None) else tokenizer
    text = render.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    rendered = guarded_ids(tokenizer, text, forged_spans(tokenizer, messages, text))  # text parts stay text
    ids: list[int] = []
    pictures = iter(images)
    for tok in rendered:
        if tok != image_id:
            ids.append(tok)
            continue
        picture = next(pictures, None)
        if picture is None:
            raise ValueError(f"the prompt has more image parts than its {len(images)} images")
        ids += image_tokens(processor, picture)
    if next(pictures, None) is not None:
        raise ValueError(f"the prompt has fewer image parts than its {len(images)} images")
    return ids, rendered


def tokenize_vl_conversation(processor, messages: list[dict], max_length: int,
                             max_side: int | None = None) -> dict[str, Any]:
    """``input_ids`` (image tokens expanded), ``labels`` (assistant tokens only), ``images`` (the references of
    the images the kept tokens hold), ``max_side`` and ``truncated``. ``max_side``: images are downscaled to fit it
    (``data.*.max_image_side``), which the token count follows and the collator repeats."""
    tokenizer, image_id = processor.tokenizer, processor.image_token_id
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    refs = [part["image"] for _, part in image_parts({"messages": messages}, "vl_sft")]
    ids: list[int] = []
    labels: list[int] = []
    kept: list[str] = []
    truncated = False
    for tok, (start, _end) in zip(enc["input_ids"], enc["offset_mapping"]):
        if tok == image_id:
            ref = refs[len(kept)]
            expanded = image_tokens(processor, ref, max_side)
            if len(ids) + len(expanded) > max_length:
                truncated = True
                break
            ids += expanded
            labels += [IGNORE] * len(expanded)
            kept.append(ref)
            continue
        if len(ids) >= max_length:
            truncated = True
            break
        ids.append(tok)
        labels.append(tok if any(s <= start < e for s, e in spans) else IGNORE)
    return {"input_ids": ids, "labels": labels, "images": kept, "max_side": max_side, "truncated": truncated}


def collate_vl(processor, rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``labels``/``attention_mask`` and the rows' images (downscaled to each row's
    ``max_side``) through the image processor (``pixel_values`` and whatever else the model takes, e.g. ``image_sizes``), in
    row order."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    batch: dict[str, Any] = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    pictures = [image_refs.open_image(ref, max_side=r.get("max_side")) for r in rows for ref in r["images"]]
    if pictures:
        batch.update(processor.image_processor(pictures, return_tensors="pt"))
    return batch


def image_inputs(processor, per_row: list | None, device=None) -> dict[str, torch.Tensor]:
    """The image processor's tensors for the images of some rows (each row's in order: ``RolloutBatch.images``),
    on ``device``; empty for rows without images."""
    pictures = [p for row in per_row or [] for p in row]
    if not pictures:
        return {}
    return {k: v.to(device) for k, v in processor.image_processor(pictures, return_tensors="pt").items()}


def collate_vl_sft(processor, rows: list[dict], pad_id: int) -> VLSFTBatch:
    """``collate_vl`` as the typed batch the training loop takes."""
    batch = collate_vl(processor, rows, pad_id)
    text = {key: batch.pop(key) for key in ("input_ids", "attention_mask", "labels")}
    return VLSFTBatch(**text, images=dict(batch))
