"""Spawning a role's Ray actors, naming them, and never waiting on them without a deadline.

Ray queues an actor whose resources are not free and waits forever without an error (four roles at
``num_cpus=1`` on a 2-CPU machine simply hang). Every role is spawned through :func:`spawn`, which waits
for each actor's ``ready()`` and, past ``timeout_s``, fails with the role's name and what it asked for.
Actors are named ``rayalign:<run>:<role>-<i>`` (:func:`actor_names`), so the dashboard's actor list and
``ray list actors`` read like the architecture. :func:`answers` is a call's deadline: a role that does
not answer in time stops the run with :class:`RoleTimeout` naming the actors, the phase and the wait; an
actor that died in the call is a :class:`RoleDied` naming it.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import ray

from rayalign.errors import RunError


class PlacementError(RuntimeError):
    pass


class RoleTimeout(RunError):
    """A call on a role's actors that did not answer within its deadline."""

    def __init__(self, message: str, role: str):
        super().__init__(message)
        self.role = role


def actor_names(run: str, role: str, count: int, start: int = 0, restart: int = 0) -> list[str]:
    """``rayalign:<run>:<role>-<i>``; a replacement actor gets ``.r<restart>`` (names are unique while the
    old actor's is released)."""
    return [f"rayalign:{run}:{role}-{i}" + (f".r{restart}" if restart else "") for i in range(start, start + count)]


def short(name: str) -> str:
    """``rayalign:<run>:learner-0`` -> ``learner-0``."""
    return name.rsplit(":", 1)[-1]


class RoleDied(RunError):
    """An actor of a role died (its process killed or crashed, or its node lost) during a call."""

    def __init__(self, message: str, role: str):
        super().__init__(message)
        self.role = role


def answers(refs: list, names: list[str], *, role: str, phase: str, timeout_s: float | None) -> list:
    """``ray.get`` of one call per actor (``names[i]`` made ``refs[i]``) within ``timeout_s``. Answers are
    read as they come, so one actor's death is seen at once, not after its peers time out waiting for it
    in a collective."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = list(refs)
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not done:
            late = ", ".join(short(names[refs.index(ref)]) for ref in pending)
            raise RoleTimeout(f"{late}: {phase} did not answer within {timeout_s:g} s (cluster.call_timeout_s."
                              f"{phase}); the actor is hung or its node is gone", role)
        try:
            ray.get(done[0])
        except ray.exceptions.RayActorError:
            raise RoleDied(f"{short(names[refs.index(done[0])])}: its Ray actor died during {phase} (the process "
                           "was killed or crashed, or its node was lost)", role) from None
    return ray.get(refs)


def quiet_actor(torch_threads: int) -> None:
    """Every role actor's first call: its torch thread budget, and no transformers progress bars (one per
    actor per weight load would bury the driver's progress bar)."""
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(torch_threads)
    hf_logging.disable_progress_bar()


def spawn(cls: type, count: int, *, role: str, num_cpus: float, num_gpus: float = 0, args: tuple = (),
          runtime_env: dict | None = None, timeout_s: float = 120.0, names: list[str] | None = None,
          placed: list[dict] | None = None) -> list[Any]:
    """``count`` actors of ``cls`` (which must define ``ready()``), started and ready; named ``names``, each
    with its placement options ``placed[i]`` (``Placement.options``)."""
    return launch(cls, count, role=role, num_cpus=num_cpus, num_gpus=num_gpus, args=args, runtime_env=runtime_env,
                 timeout_s=timeout_s, names=names, placed=placed)()


def launch(cls: type, count: int, *, role: str, num_cpus: float, num_gpus: float = 0, args: tuple = (),
          runtime_env: dict | None = None, timeout_s: float = 120.0, names: list[str] | None = None,
          placed: list[dict] | None = None) -> Callable[[], list[Any]]:
    """``spawn`` in two halves: the actors are created now (their constructors run meanwhile, e.g. a
    vLLM engine starting while the learners load), and the returned function waits until they are ready
    (at most ``timeout_s`` once called) and returns them."""
    remote = ray.remote(cls)
    options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "runtime_env": runtime_env}
    actors = [remote.options(**options, **({"name": names[i]} if names else {}), **(placed[i] if placed else {}))
              .remote(*args) for i in range(count)]
    refs = [a.ready.remote() for a in actors]

    def ready() -> list[Any]:
        done, waiting = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if waiting:
            for actor in actors:
                ray.kill(actor)
            free = ray.available_resources()
            raise PlacementError(
                f"{role}: {len(waiting)} of {count} actors not started within {timeout_s:g}s; each asks for "
                f"{num_cpus:g} CPU{f' and {num_gpus:g} GPU' if num_gpus else ''}, the cluster has "
                f"{free.get('CPU', 0):g} CPU / {free.get('GPU', 0):g} GPU free (lower the role's num_cpus or "
                "its number of workers)")
        ray.get(done)  # surfaces a constructor's exception
        return actors

    return ready
