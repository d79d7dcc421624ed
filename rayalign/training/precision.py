"""Mixed precision (``training.mixed_precision``) for every trainer: the model's forward under
``torch.autocast`` in bfloat16, as TRL / accelerate's ``bf16=True`` does.

Matmuls and attention run in bfloat16 (AMX / avx512-bf16 on recent x86 CPUs, tensor cores on GPUs);
the weights, their gradients and the optimizer state stay in ``model.dtype``, and every loss takes its
log-softmax in float32 (``models/logprobs.py``). Reference models and rollout engines keep their own
precision (``model.dtype``; ``rollout.dtype``).
"""

from __future__ import annotations

import functools

import torch

AUTOCAST = {"bf16": torch.bfloat16}


def apply(model: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
    """``model`` whose forward runs under autocast for ``mode`` ("no": unchanged). Set before wrapping
    (FSDP2 / DDP call the module's ``forward``, so the wrapped model autocasts too)."""
    if mode == "no":
        return model
    autocast = torch.autocast(device_type=device.type, dtype=AUTOCAST[mode])
    model.forward = functools.wraps(model.forward)(autocast(model.forward))
    return model
