"""Vision-language SFT on Ray Train (``trainer: vl_sft``, rows in format ``vl_sft``).

    rayalign train -c configs/recipes/tiny/vl_sft.yaml

The same loop as text SFT (``training.loop``: FSDP2 wraps the vision tower's and the decoder's layers, LoRA adapts
the language model only, ``model.freeze_vision`` keeps the tower fixed), with the model's processor in place of
its tokenizer: here on the driver each conversation is tokenised once with its image tokens expanded
(``data.vl_tokenize``), rows keep their image references, and each worker's collator opens the images of its
micro batch and runs the image processor. Checkpoints and ``final/`` hold the processor beside the weights.
"""

from __future__ import annotations

from functools import partial

from tqdm import tqdm

from rayalign.config import DataSplitConfig, RecipeConfig
from rayalign.data.loading import row_location
from rayalign.data.tokenize import Overlong
from rayalign.data.vl_tokenize import tokenize_vl_conversation
from rayalign.errors import DataError
from rayalign.recipes.common import tokenize_splits
from rayalign.recipes.sft import DROPPED, TRUNCATED, learns


def tokenize_split(rows, split: DataSplitConfig, processor, trainer: str, name: str) -> tuple[list[dict], list[str]]:
    """The split's conversations as token lists with their images, and a note for each kind of row that did not
    fit max_length (a cut never splits an image: ``tokenize_vl_conversation``)."""
    over = Overlong(f"data.{name}", f"max_length {split.max_length} tokens")
    out = []
    for i, row in enumerate(tqdm(rows, desc=f"tokenize {name}", disable=len(rows) < 2000)):
        ex = tokenize_vl_conversation(processor, row["messages"], split.max_length, split.max_image_side)
        keep = learns(ex)
        over.add(i, (TRUNCATED if keep else DROPPED) if ex.pop("truncated") else None)
        if keep:
            out.append(ex)
    if not out:
        raise DataError(f"data.{name}: all {over.rows} rows are longer than max_length {split.max_length} tokens "
                        f"(image tokens included) and truncation left no assistant token to learn from (first: "
                        f"{row_location(rows, 0)}); raise data.{name}.max_length")
    return out, over.notes(partial(row_location, rows))


def prepare(cfg: RecipeConfig, processor, splits: dict, echo=print) -> tuple[list[dict], list[dict] | None]:
    """(train rows, eval rows) as token lists with image references for ``training.loop``."""
    return tokenize_splits(cfg, splits, tokenize_split, processor, echo)
