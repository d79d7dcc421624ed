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

from rayalign.data import images as image_refs
from rayalign.data.formats import image_parts
from rayalign.data.tokenize import IGNORE, assistant_spans


def _tokens_per_image(processor, ref: str) -> int:
    with Image.open(image_refs.source(ref)) as image:  # the header only: no pixels decoded
        height, width = image.height, image.width
    return int(processor._get_num_multimodal_tokens(image_sizes=[[height, width]])["num_image_tokens"][0])


def tokenize_vl_conversation(processor, messages: list[dict], max_length: int) -> dict[str, Any]:
    """``input_ids`` (image tokens expanded), ``labels`` (assistant tokens only), ``images`` (the references of
    the images the kept tokens hold) and ``truncated``."""
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
            n = _tokens_per_image(processor, ref)
            if len(ids) + n > max_length:
                truncated = True
                break
            ids += [image_id] * n
            labels += [IGNORE] * n
            kept.append(ref)
            continue
        if len(ids) >= max_length:
            truncated = True
            break
        ids.append(tok)
        labels.append(tok if any(s <= start < e for s, e in spans) else IGNORE)
    return {"input_ids": ids, "labels": labels, "images": kept, "truncated": truncated}


def collate_vl(processor, rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``labels``/``attention_mask`` and the rows' images through the image processor
    (``pixel_values`` and whatever else the model takes, e.g. ``image_sizes``), in row order."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    pictures = [image_refs.open_image(ref) for r in rows for ref in r["images"]]
    if pictures:
        batch.update(processor.image_processor(pictures, return_tensors="pt"))
    return batch
