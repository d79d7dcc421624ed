"""The DPO family on Ray Train: DPO (sigmoid), cDPO / robust (label noise), IPO, hinge (SLiC),
SimPO and ORPO (reference-free), and KTO (unpaired rows, ``trainer: kto``). Reward models
(``trainer: reward_model``) take the same preference rows, tokenised here too, with an optional ``margin``.

    rayalign train -c configs/recipes/tiny/dpo.yaml
    rayalign train -c configs/recipes/tiny/kto.yaml

Losses are the pure functions in ``algorithms/preference.py``. Reference log-probs
(``preference.reference``):
- ``precompute`` (default): one pass of the frozen initial model over the tokenised dataset before
  training, as a Ray Data ``map_batches`` over an actor pool. Why Ray Data rather than a reference
  actor: it is a batch-inference job (stateless, embarrassingly parallel, sized by its own
  ``num_cpus``/GPUs), it finishes and frees its resources before the Ray Train workers start, so the
  reference never shares memory with the policy; and it scales out without code of ours.
- ``online``: each worker holds a frozen copy and scores every batch (no precompute pass; memory x2).
Reference-free losses (SimPO, ORPO) skip the reference entirely.
"""

from __future__ import annotations

from functools import partial

from tqdm import tqdm

from rayalign.algorithms.preference import REFERENCE_FREE
from rayalign.config import DataSplitConfig, RecipeConfig
from rayalign.data.collate import tokenize_kto, tokenize_preference
from rayalign.data.loading import row_location
from rayalign.data.tokenize import Overlong
from rayalign.recipes.common import tokenize_splits
from rayalign.workers.reference import score_reference

TRUNCATED = "were truncated to it (the prompt keeps its end, the completion its start)"


def tokenize_split(rows, split: DataSplitConfig, tokenizer, trainer: str,
                   name: str) -> tuple[list[dict], list[str]]:
    """The split's rows as token lists, and a note on the rows longer than max_length."""
    over = Overlong(f"data.{name}", f"max_length {split.max_length} tokens")
    out = []
    for i, row in enumerate(tqdm(rows, desc=f"tokenize {name}", disable=len(rows) < 5000)):
        if trainer == "kto":  # KL pair: this prompt with the previous row's completion (TRL's shift)
            partner = rows[i - 1]["completion"]
            ex = tokenize_kto(tokenizer, row, partner, split.max_length)
        else:
            ex = tokenize_preference(tokenizer, row, split.max_length)
            if trainer == "reward_model" and row.get("margin") is not None:
                ex["margin"] = float(row["margin"])
        over.add(i, TRUNCATED if ex.pop("truncated") else None)
        out.append(ex)
    return out, over.notes(partial(row_location, rows))


def prepare(cfg: RecipeConfig, tokenizer, splits: dict, echo=print) -> tuple[list[dict], list[dict] | None]:
    """Tokenised rows; rows longer than max_length are noted through ``echo``."""
    return tokenize_splits(cfg, splits, tokenize_split, tokenizer, echo)


def with_reference(cfg: RecipeConfig, train: list[dict], evals: list[dict] | None,
                   pad_id: int) -> tuple[list[dict], list[dict] | None]:
    """The rows with reference log-probs attached when the loss needs them precomputed (Ray must be up:
    the expensive pass, run after the resource check)."""
    needs_ref = cfg.trainer == "kto" or cfg.preference.loss_type not in REFERENCE_FREE
    if needs_ref and cfg.preference.reference == "precompute":
        train = score_reference(cfg, train, pad_id)
        evals = score_reference(cfg, evals, pad_id) if evals else None
    return train, evals
