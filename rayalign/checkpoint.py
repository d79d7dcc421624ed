"""Checkpoints: an HF model directory plus the state that makes ``--resume`` continue bit for bit.

Layout of one checkpoint (a Ray Train ``Checkpoint`` directory, persisted under
``OUTPUT_DIR/checkpoints/checkpoint-NNNNNN``)::

    model/              save_pretrained output (safetensors + config + tokenizer); for LoRA the adapter
    model/merged/       LoRA only, when model.lora.save_merged: the merged full model (vLLM-loadable)
    optimizer.pt        the full (unsharded) optimizer state
    scheduler.pt        the lr scheduler state
    trainer_state.json  {"step", "samples_seen", "epoch"}: the data position

Data order is a pure function of (seed, epoch) and each step reseeds torch from (seed, step, rank),
so the step count is the whole data/RNG position. Pure torch + files: Ray wraps the directory.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rayalign.errors import UserError

MODEL, OPTIMIZER, SCHEDULER, STATE = "model", "optimizer.pt", "scheduler.pt", "trainer_state.json"
RUN_NAME = "checkpoints"  # OUTPUT_DIR/checkpoints/checkpoint-NNNNNN


class CheckpointError(UserError):
    """A checkpoint that cannot be trusted or read."""


@dataclass
class TrainerState:
    step: int = 0           # optimizer steps done
    samples_seen: int = 0   # training sequences (or pairs) consumed, over all workers
    epoch: float = 0.0      # samples_seen / dataset size


def save_model_dir(path: Path, model: torch.nn.Module, state_dict: dict, tokenizer, merge_from=None) -> None:
    """Write ``model`` (its unwrapped HF / peft module) with ``state_dict`` as an HF directory."""
    model.save_pretrained(path, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(path)
    if merge_from is not None:  # LoRA: merge into a fresh copy of the base, leave the trained model alone
        from peft import PeftModel

        merged = PeftModel.from_pretrained(merge_from(), path).merge_and_unload()
        merged.save_pretrained(path / "merged", safe_serialization=True)
        tokenizer.save_pretrained(path / "merged")


def save_training_state(path: Path, optimizer_state: dict, scheduler, state: TrainerState) -> None:
    torch.save(optimizer_state, path / OPTIMIZER)
    torch.save(scheduler.state_dict(), path / SCHEDULER)
    (path / STATE).write_text(json.dumps(asdict(state)))


def read_state(path: str | Path) -> TrainerState:
    return TrainerState(**json.loads((Path(path) / STATE).read_text()))


def load_training_state(path: str | Path) -> tuple[dict, dict, TrainerState]:
    """(full optimizer state, scheduler state, trainer state) of a checkpoint directory. The two .pt files
    are read with ``weights_only=True``: tensors and plain containers only, so a tampered file cannot run
    code (a pickled ``__reduce__`` payload is refused)."""
    path = Path(path)
    return _load_tensors(path / OPTIMIZER), _load_tensors(path / SCHEDULER), read_state(path)


def _load_tensors(file: Path) -> dict:
    try:
        return torch.load(file, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{file}: refused to load: it holds more than tensors and plain data, which could "
                              f"run code ({reason})") from None


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / RUN_NAME
    return sorted(p.parent for p in root.glob("checkpoint-*/trainer_state.json"))
