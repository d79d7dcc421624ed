"""What every training driver does before it starts workers: make local paths absolute and decide
whether an output directory may be written (a new run, or ``--resume`` of one that has steps left)."""

from __future__ import annotations

from pathlib import Path

from rayalign.checkpoint import TrainerState, checkpoints, read_state
from rayalign.config import RecipeConfig
from rayalign.errors import UserError


def check_resume(cfg: RecipeConfig, out: Path, max_steps: int) -> TrainerState | None:
    """The state to resume from, None for a fresh run; refuses to overwrite a run or resume a finished one."""
    found = checkpoints(out)
    if not found:
        return None
    if cfg.training.resume == "never":
        raise UserError(f"training.output_dir: {out} already holds checkpoints of a run (last: {found[-1].name}); "
                        "pass --resume to continue it, or choose another output_dir")
    state = read_state(found[-1])
    if state.step >= max_steps:
        raise UserError(f"training.max_steps: the run in {out} already finished {state.step} steps; "
                        f"raise max_steps above {state.step} to train further")
    return state


def local_paths(cfg: RecipeConfig) -> RecipeConfig:
    """Make local model paths absolute: Ray workers run in their own working directory."""
    update = {key: str(Path(value).resolve()) for key in ("name_or_path", "tokenizer")
              if (value := getattr(cfg.model, key)) and Path(value).exists()}
    return cfg.model_copy(update={"model": cfg.model.model_copy(update=update)}) if update else cfg
