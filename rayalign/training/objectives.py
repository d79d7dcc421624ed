"""What each trainer minimises, given the model and one typed micro batch.

Each objective returns ``(loss_sum, metrics)``: a loss *summed* over its units (label tokens for SFT,
pairs for DPO and reward models, rows for KTO) and ``units(batch)`` counts them. The loop divides by the
step's global unit count, so gradient accumulation and worker count do not change the update (micro batch 1 x
accumulation 4 equals micro batch 4 x accumulation 1).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from rayalign.algorithms import preference as P
from rayalign.algorithms.reward_model import bradley_terry_loss
from rayalign.batch import KTOBatch, PreferenceBatch, RewardBatch, SFTBatch, VLSFTBatch
from rayalign.config import PreferenceConfig
from rayalign.models.logprobs import IGNORE, sequence_logps, token_logps

Metrics = dict[str, float]


class Objective(Protocol):
    def units(self, batch) -> float: ...
    def loss(self, model: torch.nn.Module, batch) -> tuple[torch.Tensor, Metrics]: ...


class SFTObjective:
    """Next-token NLL on label tokens (assistant turns for SFT, everything for pretraining)."""

    def units(self, batch: SFTBatch) -> float:
        return float((batch.labels[:, 1:] != IGNORE).sum())

    def loss(self, model, batch: SFTBatch) -> tuple[torch.Tensor, Metrics]:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, use_cache=False).logits
        logp, _ = token_logps(logits, batch.labels)
        return -logp.sum(), {}


class VLSFTObjective(SFTObjective):
    """SFT's NLL on a vision-language model: the forward also takes the batch's images."""

    def loss(self, model, batch: VLSFTBatch) -> tuple[torch.Tensor, Metrics]:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                       **batch.images).logits
        logp, _ = token_logps(logits, batch.labels)
        return -logp.sum(), {}


RefFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class PreferenceObjective:
    """Paired DPO-family losses; reference log-probs precomputed in the batch or from ``reference``."""

    def __init__(self, cfg: PreferenceConfig, reference: RefFn | None = None):
        self.cfg, self.reference = cfg, reference

    def units(self, batch: PreferenceBatch) -> float:
        return float(batch.input_ids.shape[0] // 2)

    def _chosen_nll(self, logits, input_ids, attention_mask) -> torch.Tensor:
        """ORPO's SFT term: mean NLL of every chosen token, prompt included (the ORPO authors' default,
        as TRL does); zero for the other losses."""
        if self.cfg.loss_type != "orpo":
            return torch.zeros((), device=logits.device)
        logp, mask = token_logps(logits, input_ids.masked_fill(attention_mask == 0, -100))
        return -logp.sum() / mask.sum().clamp(min=1)

    def _ref(self, batch) -> torch.Tensor:
        if self.cfg.loss_type in P.REFERENCE_FREE:
            return torch.zeros_like(batch.ref_logps)
        if self.reference is not None:
            return self.reference(batch.input_ids, batch.attention_mask, batch.labels)
        return batch.ref_logps

    def loss(self, model, batch: PreferenceBatch) -> tuple[torch.Tensor, Metrics]:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        logp, mask = token_logps(logits, batch.labels)
        logps, lens = logp.sum(-1), mask.sum(-1)
        ref = self._ref(batch)
        b = logps.shape[0] // 2
        chosen_nll = self._chosen_nll(logits[:b], batch.input_ids[:b], batch.attention_mask[:b])
        loss, metrics = P.pair_loss(self.cfg, logps[:b], logps[b:], ref[:b], ref[b:], lens[:b], lens[b:],
                                    chosen_nll)
        metrics["logps/chosen"] = logps[:b].detach().mean().item()
        metrics["logps/rejected"] = logps[b:].detach().mean().item()
        return loss * b, metrics


class KTOObjective:
    """KTO on unpaired rows; the reference point z comes from each row's mismatched KL pair.

    ``kl_reduce`` averages z over the data-parallel workers (as TRL gathers it across processes).
    """

    def __init__(self, cfg: PreferenceConfig, reference: RefFn | None = None,
                 kl_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda z: z):
        self.cfg, self.reference, self.kl_reduce = cfg, reference, kl_reduce

    def units(self, batch: KTOBatch) -> float:
        return float(batch.desirable.shape[0])

    def loss(self, model, batch: KTOBatch) -> tuple[torch.Tensor, Metrics]:
        logps, _ = sequence_logps(model, batch.input_ids, batch.attention_mask, batch.labels)
        ref = batch.ref_logps if self.reference is None else self.reference(
            batch.input_ids, batch.attention_mask, batch.labels)
        b = batch.desirable.shape[0]
        kl = P.kto_kl(logps[b:], ref[b:], self.kl_reduce)
        loss, metrics = P.kto_loss(logps[:b], ref[:b], batch.desirable, kl, self.cfg.beta,
                                   self.cfg.desirable_weight, self.cfg.undesirable_weight)
        return loss * b, metrics


class RewardModelObjective:
    """Bradley-Terry on preference pairs, for a model with a one-label score head
    (``AutoModelForSequenceClassification``), which scores each sequence at its last non-padding token."""

    def __init__(self, cfg: PreferenceConfig):
        self.cfg = cfg

    def units(self, batch: RewardBatch) -> float:
        return float(batch.margin.shape[0])

    def loss(self, model, batch: RewardBatch) -> tuple[torch.Tensor, Metrics]:
        scores = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        chosen, rejected = scores.squeeze(-1).float().chunk(2)
        loss, metrics = bradley_terry_loss(chosen, rejected, batch.margin, self.cfg.center_rewards_coefficient)
        return loss * chosen.shape[0], metrics


def make_objective(trainer: str, cfg: PreferenceConfig, reference: RefFn | None, device) -> Objective:
    """The objective of ``trainer``; KTO's reference point is averaged over data-parallel workers."""
    if trainer in ("sft", "pretrain"):
        return SFTObjective()
    if trainer == "vl_sft":
        return VLSFTObjective()
    if trainer == "reward_model":
        return RewardModelObjective(cfg)
    if trainer == "kto" or cfg.loss_type == "kto":
        from rayalign.training.sharding import world

        def kl_reduce(z: torch.Tensor) -> torch.Tensor:
            if world()[1] == 1:
                return z
            import torch.distributed as dist

            z = z.detach().clone()
            dist.all_reduce(z)
            return z / world()[1]
        return KTOObjective(cfg, reference, kl_reduce)
    return PreferenceObjective(cfg, reference)
