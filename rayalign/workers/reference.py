"""The reference model's log-probs, for the two ways trainers use them.

DPO / KTO (``score_reference``): log pi_ref of every completion, once, before training starts.

A Ray Data ``map_batches`` over an actor pool (``scaling.num_workers`` actors, each with
``scaling.cpus_per_worker`` CPUs, or one GPU each with ``scaling.use_gpu``). Each actor loads the
frozen initial model (the base model, without LoRA) once. Only row indices travel through Ray Data;
the tokenised rows reach the actors through the object store.

Online RL (:class:`ReferenceWorker`): one actor holding the frozen initial policy, asked each step for
the per-token log-probs of the step's samples (unless ``reference.colocate`` folds it into the learners).
"""

from __future__ import annotations

import numpy as np
import ray
import torch

from rayalign.batch import RolloutBatch
from rayalign.config import ModelConfig, RecipeConfig
from rayalign.data.collate import collate_kto, collate_preference
from rayalign.data.vl_tokenize import image_inputs
from rayalign.models.loading import load_model
from rayalign.models.vlm import is_vlm, load_processor
from rayalign.workers.group import quiet_actor
from rayalign.models.logprobs import next_token_logps, sequence_logps

# trainer -> (collate, names of the two halves' reference keys)
_HALVES = {"dpo": (collate_preference, ("ref_chosen", "ref_rejected")),
           "kto": (collate_kto, ("ref_pair", "ref_kl"))}


class ReferenceScorer:
    def __init__(self, model: ModelConfig, rows: list, pad_id: int, trainer: str, threads: int, use_gpu: bool):
        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.model = load_model(model, apply_lora=False).to(self.device).eval()
        self.rows = ray.get(rows[0])  # wrapped in a list so Ray passes the ref, not a copy per call
        self.pad_id, self.trainer = pad_id, trainer

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        index = batch["id"].tolist()
        collate, (a, b) = _HALVES[self.trainer]
        tensors = collate([self.rows[i] for i in index], self.pad_id).to(self.device)
        with torch.no_grad():
            logps, _ = sequence_logps(self.model, tensors.input_ids, tensors.attention_mask, tensors.labels)
        half = len(index)
        return {"id": np.array(index), a: logps[:half].cpu().numpy(), b: logps[half:].cpu().numpy()}


def score_reference(cfg: RecipeConfig, rows: list[dict], pad_id: int) -> list[dict]:
    """``rows`` with their reference log-probs added (keys per trainer, see ``_HALVES``)."""
    s = cfg.scaling
    # from_items: the index blocks come from the driver, so no read task competes with the actor pool
    # for CPUs (ray.data.range's read task deadlocks when the pool takes every CPU of a small machine)
    scored = ray.data.from_items([{"id": i} for i in range(len(rows))]).map_batches(
        ReferenceScorer, batch_size=max(cfg.training.micro_batch_size, 8), concurrency=s.num_workers,
        num_cpus=s.cpus_per_worker, num_gpus=1 if s.use_gpu else 0,
        fn_constructor_args=(cfg.model, [ray.put(rows)], pad_id, "kto" if cfg.trainer == "kto" else "dpo",
                             s.torch_threads or max(1, int(s.cpus_per_worker)), s.use_gpu),
    ).take_all()
    _, keys = _HALVES["kto" if cfg.trainer == "kto" else "dpo"]
    out = [dict(r) for r in rows]
    for rec in scored:
        for key in keys:
            out[int(rec["id"])][key] = float(rec[key])
    missing = sum(1 for r in out if keys[0] not in r)
    if missing:
        raise RuntimeError(f"reference pass: {missing} of {len(out)} rows came back without log-probs")
    return out


class ReferenceWorker:
    def __init__(self, model: ModelConfig, micro_batch_size: int, threads: int = 1, use_gpu: bool = False):
        quiet_actor(threads)
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.processor = load_processor(model) if is_vlm(model) else None  # a vision-language policy's
        self.model = load_model(model, apply_lora=False, head="vl" if self.processor else "lm").to(
            self.device).eval().requires_grad_(False)
        self.micro = micro_batch_size

    def ready(self) -> bool:
        return True

    @torch.no_grad()
    def logps(self, batch: RolloutBatch) -> torch.Tensor:
        """log pi_ref of every next token [N, L-1], zero where ``completion_mask`` is 0."""
        out = torch.zeros_like(batch.rollout_logps)
        for start in range(0, batch.input_ids.shape[0], self.micro):
            rows = list(range(start, min(start + self.micro, batch.input_ids.shape[0])))
            part = batch.select(rows).to(self.device)
            images = image_inputs(self.processor, part.images, self.device) if self.processor else None
            out[start:start + len(rows)] = next_token_logps(self.model, part.input_ids, part.attention_mask,
                                                            images=images)[0].cpu()
        return out * batch.completion_mask
