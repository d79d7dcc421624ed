"""Checkpoints: an HF model directory plus the state that makes ``--resume`` continue bit for bit.

Layout of one checkpoint (a Ray Train ``Checkpoint`` directory, persisted under
``OUTPUT_DIR/checkpoints/checkpoint-NNNNNN``)::

    model/              save_pretrained output (safetensors + config + tokenizer); for LoRA the adapter
    model/merged/       LoRA only, when model.lora.save_merged: the merged full model (vLLM-loadable)
    optimizer.pt        fsdp / ddp: the full (unsharded) optimizer state
    deepspeed/          deepspeed: the engine's own checkpoint (every rank's ZeRO shard), training/zero.py
    scheduler.pt        the lr scheduler state
    trainer_state.json  {"step", "samples_seen", "epoch"}: the data position
    checkpoint.json     written last: the size of every file above and the run it belongs to (trainer,
                        model, architecture, LoRA). A checkpoint is complete only when every listed file is
                        there at its size, so a save torn by a full disk or a kill is never resumed from.

A checkpoint is built in a temporary directory and then moved (GRPO learners: renamed) or copied by Ray
Train into ``checkpoints/``; either way the manifest decides whether it counts.

Data order is a pure function of (seed, epoch) and each step reseeds torch from (seed, step, rank),
so the step count is the whole data/RNG position. Pure torch + files: Ray wraps the directory.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rayalign.errors import UserError

MODEL, OPTIMIZER, SCHEDULER, STATE = "model", "optimizer.pt", "scheduler.pt", "trainer_state.json"
MANIFEST = "checkpoint.json"
RUN_NAME = "checkpoints"  # OUTPUT_DIR/checkpoints/checkpoint-NNNNNN
_NAME = re.compile(r"checkpoint-\d+")


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


def save_training_state(path: Path, scheduler, state: TrainerState) -> None:
    """The schedule and the data position (the optimizer's state is the strategy's: ``training/sharding.py``)."""
    torch.save(scheduler.state_dict(), path / SCHEDULER)
    (path / STATE).write_text(json.dumps(asdict(state)))


def write_manifest(path: Path, state: TrainerState, run: dict) -> None:
    """Seal checkpoint ``path``: list every file with its size, plus ``run`` (see ``run_identity``)."""
    files = {p.relative_to(path).as_posix(): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}
    tmp = path / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"step": state.step, "run": run, "files": files}, indent=1))
    os.replace(tmp, path / MANIFEST)


def run_identity(trainer: str, model, architecture: str) -> dict:
    """What a checkpoint must share with a recipe that resumes it; keys are the config keys to blame."""
    return {"trainer": trainer, "model.name_or_path": model.name_or_path, "architecture": architecture,
            "model.lora": model.lora.model_dump(mode="json") if model.lora else None}


def read_manifest(path: str | Path) -> dict:
    return json.loads((Path(path) / MANIFEST).read_text())


def problem(path: str | Path) -> str | None:
    """Why checkpoint ``path`` cannot be trusted; None when it is complete."""
    path = Path(path)
    try:
        files = read_manifest(path)["files"]
    except FileNotFoundError:
        return f"it has no {MANIFEST}: its save did not finish"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its {MANIFEST} is damaged ({type(exc).__name__})"
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} is {file.stat().st_size} bytes, {size} were written"
    return None


def read_state(path: str | Path) -> TrainerState:
    file = Path(path) / STATE
    try:
        return TrainerState(**json.loads(file.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{file}: cannot read the trainer state ({type(exc).__name__}: {exc})") from None


def load_training_state(path: str | Path) -> tuple[dict, TrainerState]:
    """(scheduler state, trainer state) of a checkpoint directory. Our .pt files (this one and the torch
    strategies' optimizer.pt) are read with ``weights_only=True`` (``load_tensors``)."""
    path = Path(path)
    return load_tensors(path / SCHEDULER), read_state(path)


def load_tensors(file: Path) -> dict:
    """Tensors and plain containers only, so a tampered file cannot run code (a pickled ``__reduce__``
    payload is refused)."""
    try:
        return torch.load(file, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{file}: refused to load: it holds more than tensors and plain data, which could "
                              f"run code ({reason})") from None


def _listed(output_dir: str | Path) -> list[Path]:
    root = Path(output_dir) / RUN_NAME
    return sorted(p for p in root.glob("checkpoint-*") if p.is_dir() and _NAME.fullmatch(p.name))


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    return [p for p in _listed(output_dir) if problem(p) is None]


def incomplete(output_dir: str | Path) -> list[tuple[Path, str]]:
    """The run's checkpoint directories that are not complete, each with the reason."""
    return [(p, why) for p in _listed(output_dir) if (why := problem(p)) is not None]


def prune(output_dir: str | Path, keep: int | None) -> None:
    """Keep the newest ``keep`` complete checkpoints (all when None)."""
    import shutil

    for old in (checkpoints(output_dir)[:-keep] if keep else []):
        shutil.rmtree(old, ignore_errors=True)
