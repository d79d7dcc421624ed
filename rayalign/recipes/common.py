"""What every training driver does to its config before it starts workers (the output directory's
rules live in ``recipes/output_dir.py``)."""

from __future__ import annotations

from pathlib import Path

from rayalign.config import RecipeConfig


def local_paths(cfg: RecipeConfig) -> RecipeConfig:
    """Make local model paths absolute: Ray workers run in their own working directory."""
    update = {key: str(Path(value).resolve()) for key in ("name_or_path", "tokenizer")
              if (value := getattr(cfg.model, key)) and Path(value).exists()}
    return cfg.model_copy(update={"model": cfg.model.model_copy(update=update)}) if update else cfg
