"""SFT and pretraining on Ray Train.

    rayalign train -c configs/recipes/tiny/sft.yaml        # trainer: sft
    rayalign train -c configs/recipes/tiny/pretrain.yaml   # trainer: pretrain

SFT minimises the next-token NLL of assistant turns only (the chat template renders the conversation;
``data.tokenize`` finds the assistant spans), pretraining the NLL of every token of plain text, packed
into ``max_length`` blocks when ``data.train.packing``. The loss is averaged over all label tokens of
the global batch (not per micro batch), so gradient accumulation does not change the update.
The rows are tokenised here, on the driver, once; the Ray Train workers (``workers/train_worker.py``)
run ``training.loop``.
"""

from __future__ import annotations

from functools import partial

from tqdm import tqdm

from rayalign.config import DataSplitConfig, RecipeConfig
from rayalign.data.loading import row_location
from rayalign.data.tokenize import IGNORE, Overlong, pack, tokenize_conversation, tokenize_text
from rayalign.errors import DataError
from rayalign.recipes.common import tokenize_splits

TRUNCATED = "were truncated to it"
DROPPED = "were dropped: truncation left no assistant token to learn from"


def learns(ex: dict) -> bool:
    return any(label != IGNORE for label in ex["labels"][1:])


def tokenize_split(rows, split: DataSplitConfig, tokenizer, trainer: str,
                   name: str) -> tuple[list[dict], list[str]]:
    """The split's rows as token lists, and a note for each kind of row that did not fit max_length."""
    over = Overlong(f"data.{name}", f"max_length {split.max_length} tokens")
    out = []
    for i, row in enumerate(tqdm(rows, desc=f"tokenize {name}", disable=len(rows) < 5000)):
        if trainer == "sft":
            ex = tokenize_conversation(tokenizer, row["messages"], split.max_length)
        else:
            ex = tokenize_text(tokenizer, row["text"], None if split.packing else split.max_length)
        keep = split.packing or learns(ex)  # packed blocks are judged after packing
        over.add(i, (TRUNCATED if keep else DROPPED) if ex.pop("truncated") else None)
        if keep:
            out.append(ex)
    if split.packing:
        out = [block for block in pack(out, split.max_length) if learns(block)]
    where = partial(row_location, rows)
    if not out and over.count(DROPPED) == over.rows:
        raise DataError(f"data.{name}: all {over.rows} rows are longer than max_length {split.max_length} tokens "
                        f"and truncation left no assistant token to learn from (first: {where(0)}); raise "
                        f"data.{name}.max_length")
    if not out:
        raise DataError(f"data.{name}: no row has a token to learn from after truncation to max_length "
                        f"{split.max_length} (packing needs at least max_length tokens in all)")
    return out, over.notes(where)


def prepare(cfg: RecipeConfig, tokenizer, splits: dict, echo=print) -> tuple[list[dict], list[dict] | None]:
    """(train rows, eval rows) as token lists for ``training.loop``; rows that did not fit max_length are
    noted through ``echo``, one line per split and kind."""
    return tokenize_splits(cfg, splits, tokenize_split, tokenizer, echo)
