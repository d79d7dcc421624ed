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

from tqdm import tqdm

from rayalign.config import DataSplitConfig, RecipeConfig
from rayalign.data.tokenize import IGNORE, pack, tokenize_conversation, tokenize_text
from rayalign.errors import DataError


def tokenize_split(rows, split: DataSplitConfig, tokenizer, trainer: str, name: str) -> list[dict]:
    out = []
    for row in tqdm(rows, desc=f"tokenize {name}", disable=len(rows) < 5000):
        if trainer == "sft":
            out.append(tokenize_conversation(tokenizer, row["messages"], split.max_length))
        else:
            ex = tokenize_text(tokenizer, row["text"])
            out.append(ex if split.packing else {k: v[: split.max_length] for k, v in ex.items()})
    if split.packing:
        out = list(pack(out, split.max_length))
    kept = [r for r in out if any(label != IGNORE for label in r["labels"][1:])]
    if not kept:
        raise DataError(f"data.{name}: no row has a token to learn from after truncation to max_length "
                        f"{split.max_length} (packing needs at least max_length tokens in all)")
    return kept


def prepare(cfg: RecipeConfig, tokenizer, splits: dict) -> tuple[list[dict], list[dict] | None]:
    """(train rows, eval rows) as token lists for ``training.loop``."""
    train = tokenize_split(splits["train"], cfg.data.train, tokenizer, cfg.trainer, "train")
    evals = tokenize_split(splits["eval"], cfg.data.eval, tokenizer, cfg.trainer, "eval") if cfg.data.eval else None
    return train, evals
