"""The Ray a command runs on: an existing cluster when there is one (``RAY_ADDRESS``, ``ray start``, a
Ray job), else a local one started by this process, which nothing of ours may outlive.

``ray.shutdown`` at exit stops a local Ray when the driver ends normally, by an exception or by
SIGINT/SIGTERM. When the driver is killed outright (SIGKILL, the OOM killer), Ray's raylet and GCS go
with it, but its agent processes can stay behind for good. So a local start also starts a reaper: a
small process in its own session that notes the driver's descendants every second and, once the driver
is gone, ends those still running (SIGTERM, then SIGKILL) and exits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

GRACE_S = 5.0  # after the driver's death: Ray's own fate-sharing goes first
API = "RAY_API_SERVER_ADDRESS"  # where Ray's State API and job client look first


def ensure(**init_kwargs) -> None:
    """``ray.init(**init_kwargs)`` unless Ray is up; a reaper when that started Ray here."""
    import ray

    if ray.is_initialized():
        return
    before = os.environ.get(API)
    if starts_local() and init_kwargs.get("include_dashboard") is not False and "dashboard_port" not in init_kwargs:
        # Ray's State API finds "the" local Ray by looking for GCS processes and gives up when there are
        # two (another user's, a test suite's); Ray Train's placement-group cleaner, in our workers, uses
        # it. So the dashboard gets a known port, named to the raylet (whose workers inherit its
        # environment) while it starts; this process's own State API calls name the cluster themselves.
        init_kwargs["dashboard_port"] = _free_port()
        os.environ[API] = f"http://127.0.0.1:{init_kwargs['dashboard_port']}"
    try:
        ray.init(**init_kwargs)
    finally:
        if before is None:
            os.environ.pop(API, None)
        else:
            os.environ[API] = before
    import psutil

    if any("raylet" in p.name() for p in psutil.Process().children(recursive=True)):
        subprocess.Popen([sys.executable, "-m", "rayalign.local_ray", str(os.getpid())], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def starts_local() -> bool:
    """Whether ``ray.init()`` will start a Ray here rather than join one (as Ray decides: ``RAY_ADDRESS``,
    else the address file ``ray start`` leaves)."""
    from ray._common.utils import get_ray_address_file

    return not os.environ.get("RAY_ADDRESS") and not os.path.exists(get_ray_address_file(None))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reap(driver_pid: int, poll_s: float = 1.0) -> list[int]:
    """Wait for ``driver_pid`` to end, then end its recorded descendants; returns the pids it had to end."""
    import psutil

    try:
        driver = psutil.Process(driver_pid)
        seen: dict[int, psutil.Process] = {}
        while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
            for child in driver.children(recursive=True):
                if child.pid != os.getpid():
                    seen.setdefault(child.pid, child)
            time.sleep(poll_s)
    except psutil.NoSuchProcess:
        pass
    deadline = time.time() + GRACE_S
    alive = list(seen.values())
    while alive and time.time() < deadline:
        time.sleep(0.5)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:  # is_running() also checks the pid was not reused by another process
        with_signal(p, "terminate")
    _, alive = psutil.wait_procs(alive, timeout=GRACE_S)
    for p in alive:
        with_signal(p, "kill")
    return [p.pid for p in alive]


def with_signal(process, how: str) -> None:
    import psutil

    try:
        getattr(process, how)()
    except psutil.Error:
        pass


if __name__ == "__main__":
    reap(int(sys.argv[1]))
