"""Spawning a role's Ray actors and noticing when the cluster cannot place them.

Ray queues an actor whose resources are not free and waits forever without an error (four roles at
``num_cpus=1`` on a 2-CPU machine simply hang). Every role is spawned through :func:`spawn`, which waits
for each actor's ``ready()`` and, past ``timeout_s``, fails with the role's name and what it asked for.
"""

from __future__ import annotations

from typing import Any

import ray


class PlacementError(RuntimeError):
    pass


def quiet_actor(torch_threads: int) -> None:
    """Every role actor's first call: its torch thread budget, and no transformers progress bars (one per
    actor per weight load would bury the driver's progress bar)."""
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(torch_threads)
    hf_logging.disable_progress_bar()


def spawn(cls: type, count: int, *, role: str, num_cpus: float, num_gpus: float = 0, args: tuple = (),
          runtime_env: dict | None = None, timeout_s: float = 120.0) -> list[Any]:
    """``count`` actors of ``cls`` (which must define ``ready()``), started and ready."""
    remote = ray.remote(cls).options(num_cpus=num_cpus, num_gpus=num_gpus, runtime_env=runtime_env)
    actors = [remote.remote(*args) for _ in range(count)]
    refs = [a.ready.remote() for a in actors]
    ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if waiting:
        for actor in actors:
            ray.kill(actor)
        free = ray.available_resources()
        raise PlacementError(
            f"{role}: {len(waiting)} of {count} actors not started within {timeout_s:g}s; each asks for "
            f"{num_cpus:g} CPU{f' and {num_gpus:g} GPU' if num_gpus else ''}, the cluster has "
            f"{free.get('CPU', 0):g} CPU / {free.get('GPU', 0):g} GPU free (lower the role's num_cpus or "
            "its number of workers)")
    ray.get(ready)  # surfaces a constructor's exception
    return actors
