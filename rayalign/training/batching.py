"""Which rows each worker trains on at each step, and the evaluation pass.

Rows are already tokenised (``recipes/*`` prepare them on the driver). Global step s uses rows
[s*G, (s+1)*G) of the concatenated epochs; within a step, micro batch a of rank r takes the slice
starting at (a*world + r)*micro. Evaluation splits the eval rows evenly over ranks, dropping the last
``len % world`` rows so every rank runs the same number of forward passes (FSDP needs that).
"""

from __future__ import annotations

import math
from functools import lru_cache, partial
from typing import Callable

import torch

from rayalign.data.collate import collate_kto, collate_preference, collate_reward, collate_sft
from rayalign.training.sharding import all_reduce_sum

COLLATE = {"sft": collate_sft, "pretrain": collate_sft, "dpo": collate_preference, "kto": collate_kto,
           "reward_model": collate_reward}
Collate = Callable[[list[dict]], object]


def collator(trainer: str, pad_id: int, processor=None) -> Collate:
    """Rows -> the trainer's typed batch; vl_sft's opens the rows' images and runs the ``processor`` on them."""
    if trainer == "vl_sft":
        from rayalign.data.vl_tokenize import collate_vl_sft

        return partial(collate_vl_sft, processor, pad_id=pad_id)
    return partial(COLLATE[trainer], pad_id=pad_id)


class DataOrder:
    def __init__(self, n: int, global_batch: int, seed: int, shuffle: bool):
        self.n, self.global_batch, self.seed, self.shuffle = n, global_batch, seed, shuffle

    @lru_cache(maxsize=4)
    def epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()

    def step_indices(self, step: int) -> list[int]:
        start = step * self.global_batch
        return [self.epoch_order(k // self.n)[k % self.n] for k in range(start, start + self.global_batch)]


def step_micro_batches(spec, order: DataOrder, step: int, rank: int, world: int, collate: Collate) -> list:
    micro = spec.training.micro_batch_size
    indices = order.step_indices(step)
    batches = []
    for a in range(spec.training.gradient_accumulation_steps):
        start = (a * world + rank) * micro
        batches.append(collate([spec.train_rows[i] for i in indices[start:start + micro]]))
    return batches


def evaluate(model, objective, rows: list[dict], micro: int, rank: int, world: int, collate: Collate,
             trainer: str, device) -> dict[str, float]:
    """``eval_loss`` (per token for SFT/pretrain: with ``eval_ppl``; per pair/row for DPO/KTO) and the
    objective's metrics averaged over eval batches, as ``eval_<name>``."""
    per_rank = len(rows) // world
    mine = rows[rank * per_rank:(rank + 1) * per_rank]
    loss_sum, units, sums, batches = 0.0, 0.0, {}, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, per_rank, micro):
            batch = collate(mine[start:start + micro]).to(device)
            loss, metrics = objective.loss(model, batch)
            loss_sum += loss.item()
            units += objective.units(batch)
            batches += 1
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
    model.train()
    keys = sorted(sums)
    reduced = all_reduce_sum([loss_sum, units, batches] + [sums[k] for k in keys], device)
    out = {"eval_loss": reduced[0] / max(reduced[1], 1)}
    if trainer in ("sft", "pretrain", "vl_sft"):
        out["eval_ppl"] = math.exp(min(out["eval_loss"], 50.0))
    out.update({f"eval_{k}": v / max(reduced[2], 1) for k, v in zip(keys, reduced[3:])})
    return out
