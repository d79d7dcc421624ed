"""The DPO family on Ray Train: DPO (sigmoid), cDPO / robust (label noise), IPO, hinge (SLiC),
SimPO and ORPO (reference-free), and KTO (unpaired rows, ``trainer: kto``).

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

from tqdm import tqdm

from rayalign.algorithms.preference import REFERENCE_FREE
from rayalign.config import DataSplitConfig, RecipeConfig
from rayalign.data.collate import tokenize_kto, tokenize_preference
from rayalign.workers.reference import score_reference


def tokenize_split(rows, split: DataSplitConfig, tokenizer, trainer: str, name: str) -> list[dict]:
    out = []
    for i, row in enumerate(tqdm(rows, desc=f"tokenize {name}", disable=len(rows) < 5000)):
        if trainer == "kto":  # KL pair: this prompt with the previous row's completion (TRL's shift)
            partner = rows[i - 1]["completion"]
            out.append(tokenize_kto(tokenizer, row, partner, split.max_length))
        else:
            out.append(tokenize_preference(tokenizer, row, split.max_length))
    return out


def prepare(cfg: RecipeConfig, tokenizer, splits: dict) -> tuple[list[dict], list[dict] | None]:
    """Tokenised rows, with reference log-probs attached when the loss needs them precomputed."""
    train = tokenize_split(splits["train"], cfg.data.train, tokenizer, cfg.trainer, "train")
    evals = tokenize_split(splits["eval"], cfg.data.eval, tokenizer, cfg.trainer, "eval") if cfg.data.eval else None
    needs_ref = cfg.trainer == "kto" or cfg.preference.loss_type not in REFERENCE_FREE
    if needs_ref and cfg.preference.reference == "precompute":
        from rayalign import local_ray

        local_ray.ensure()
        train = score_reference(cfg, train, tokenizer.pad_token_id)
        evals = score_reference(cfg, evals, tokenizer.pad_token_id) if evals else None
    return train, evals
