"""The output directory of a training run, claimed before any work starts.

``claim`` is the one place that decides whether a run may write ``training.output_dir``:

- it must be a directory we can write (not a file, not on a read-only disk);
- a lock file (``.rayalign.lock``, ``flock``) keeps a second run out while this one lives; the kernel drops
  the lock when the process ends, however it ends;
- checkpoints whose manifest does not check out (a save torn by a full disk or a kill) are named and moved
  aside to ``checkpoint-N.incomplete``, so every listing (ours, and the one Ray Train is handed) sees the
  same complete checkpoints;
- an earlier run is never replaced silently: with complete checkpoints it needs ``--resume`` (and the same
  trainer, model, architecture and LoRA as the checkpoint) or ``--overwrite``; a finished run whose
  checkpoints are gone still needs ``--overwrite``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from rayalign.checkpoint import (RUN_NAME, TrainerState, checkpoints, incomplete, read_manifest, read_state,
                                 run_identity)
from rayalign.config import RecipeConfig
from rayalign.errors import UserError

LOCK = ".rayalign.lock"
RUN_FILES = ("final", "metrics.jsonl", "trainer_state.json", "tensorboard", RUN_NAME, "config.yaml")


@dataclass
class Claim:
    out: Path
    run: dict                          # this recipe's identity, sealed into every checkpoint it writes
    resume_from: Path | None = None    # the complete checkpoint to continue from
    state: TrainerState | None = None  # its trainer state


def architecture(cfg: RecipeConfig) -> str:
    from transformers import AutoConfig

    m = cfg.model
    try:
        config = AutoConfig.from_pretrained(m.name_or_path, revision=m.revision, trust_remote_code=m.trust_remote_code)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"model.name_or_path: cannot read the model config of '{m.name_or_path}': {first}") from None
    return (config.architectures or [config.model_type])[0]


@contextlib.contextmanager
def claim(cfg: RecipeConfig, echo: Callable[[str], None] = print) -> Iterator[Claim]:
    """Hold ``training.output_dir`` for this run; see the module doc for the rules."""
    t = cfg.training
    out = Path(t.output_dir).resolve()
    if t.overwrite and t.resume == "auto":
        raise UserError("--overwrite and --resume contradict each other: resume continues the run in "
                        "training.output_dir, overwrite replaces it")
    run = run_identity(cfg.trainer, cfg.model, architecture(cfg))
    with _lock(out):
        yield _decide(cfg, out, run, echo)


def check_unfinished(c: Claim, max_steps: int) -> None:
    if c.state is not None and c.state.step >= max_steps:
        raise UserError(f"training.max_steps: the run in {c.out} already finished {c.state.step} steps; "
                        f"raise max_steps above {c.state.step} to train further")


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    if out.exists() and not out.is_dir():
        raise UserError(f"training.output_dir: {out} is a file, not a directory")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK, "a+")
    except OSError as exc:
        raise UserError(f"training.output_dir: cannot write in {out}: {exc.strerror or exc}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise UserError(f"training.output_dir: {out} is in use by another rayalign run (pid {holder}); wait "
                            "for it to end, or choose another output_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            if created and [p.name for p in out.iterdir()] == [LOCK]:  # refused before writing: leave no trace
                shutil.rmtree(out)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _decide(cfg: RecipeConfig, out: Path, run: dict, echo) -> Claim:
    t = cfg.training
    for path, why in incomplete(out):
        aside = _free_name(path.with_name(path.name + ".incomplete"))
        path.rename(aside)
        echo(f"ignoring {path.name}: {why}; moved to {aside.name}")
    found = checkpoints(out)
    earlier = [name for name in RUN_FILES if (out / name).exists()]
    if t.overwrite:
        for name in earlier:
            shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
        if earlier:
            echo(f"--overwrite: removed the earlier run in {out} ({', '.join(earlier)})")
        return Claim(out, run)
    if found and t.resume == "auto":
        _check_same_run(found[-1], run)
        return Claim(out, run, found[-1], read_state(found[-1]))
    if found:
        raise UserError(f"training.output_dir: {out} already holds checkpoints of a run (last: {found[-1].name}); "
                        "pass --resume to continue it, --overwrite to replace it, or choose another output_dir")
    produced = [name for name in earlier if name != "config.yaml" and name != RUN_NAME]
    if produced:
        what = "nothing to resume: " if t.resume == "auto" else ""
        raise UserError(f"training.output_dir: {what}{out} holds an earlier run ({', '.join(produced)}) and no "
                        "complete checkpoint; pass --overwrite to replace it, or choose another output_dir")
    if t.resume == "auto":
        echo(f"--resume: no checkpoint in {out}; starting from the beginning")
    return Claim(out, run)


def _check_same_run(checkpoint: Path, run: dict) -> None:
    saved = read_manifest(checkpoint).get("run", {})
    for key, now in run.items():
        if key in saved and saved[key] != now:
            raise UserError(f"{key}: {checkpoint.name} in {checkpoint.parent.parent} was trained with "
                            f"{json.dumps(saved[key])}, the recipe now says {json.dumps(now)}; --resume needs the "
                            "recipe the run started with (or --overwrite, or another output_dir)")


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate
