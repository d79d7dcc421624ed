"""Deploying the OpenAI-compatible app on Ray Serve: replicas and autoscaling from ``serve:``, a resource
check before anything starts, and a deploy timeout naming what is missing (Ray Serve otherwise waits
forever for replicas the cluster cannot place).

``rayalign serve`` deploys, prints the URL and stays up until Ctrl-C (then deletes the app); with
``--detach`` it leaves the app on a running cluster (``rayalign serve --stop`` deletes it).
"""

from __future__ import annotations

import os
import re
import time
from typing import Callable

import ray
from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ApplicationStatus

from rayalign.config import ModelConfig, ServeConfig
from rayalign.errors import UserError
from rayalign.serve.server import OpenAIServer


class DeployError(UserError):
    """The app could not be placed or did not come up; the message names the config keys to change."""


def api_key(cfg: ServeConfig) -> str | None:
    """``serve.api_key``, else the ``serve.api_key_env`` variable, else none (an open server)."""
    return cfg.api_key or os.environ.get(cfg.api_key_env) or None


def application(model: ModelConfig, cfg: ServeConfig) -> serve.Application:
    # the replica runs its own bounded queue (429 past it, server.py); Serve hands it four times that (at least
    # 64), so the excess reaches the replica and gets its quick 429 (JSON, Retry-After) rather than waiting in
    # Serve's router or meeting Serve's own plain 503 (its max_queued_requests, seen in a burst of 8 at 2 held)
    held = cfg.max_ongoing_requests + cfg.max_queued_requests
    options: dict = {"ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
                     "max_ongoing_requests": max(4 * held, 64),
                     "health_check_period_s": cfg.health_check_period_s}
    if cfg.autoscaling:
        options["autoscaling_config"] = {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                                         "target_ongoing_requests": cfg.target_ongoing_requests}
    else:
        options["num_replicas"] = cfg.num_replicas
    return OpenAIServer.options(**options).bind(model, cfg, api_key(cfg))


def check_resources(cfg: ServeConfig) -> None:
    replicas = cfg.start_replicas
    free = ray.available_resources()
    for kind, each in (("CPU", cfg.num_cpus), ("GPU", cfg.num_gpus)):
        if each and replicas * each > free.get(kind, 0) + 1e-9:
            key = "num_cpus" if kind == "CPU" else "num_gpus"
            raise DeployError(f"serve: {replicas} replica(s) x {each:g} {kind} = {replicas * each:g} {kind}, "
                              f"the cluster has {free.get(kind, 0):g} free (lower serve.{key} or the replicas)")


def deploy(model: ModelConfig, cfg: ServeConfig) -> str:
    """Deploy (replacing an app of the same name) and wait until it serves; the API's base URL."""
    check_resources(cfg)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    http = _get_global_client().http_config  # Serve's HTTP options are set once per cluster
    if (http.host, http.port) != (cfg.host, cfg.port):
        raise DeployError(f"serve: Ray Serve already listens on {http.host}:{http.port} on this cluster; "
                          f"set serve.host/serve.port to that, or delete its apps first (rayalign serve --stop)")
    serve.run_many([serve.RunTarget(target=application(model, cfg), name=cfg.app_name,
                                    route_prefix=cfg.route_prefix)], wait_for_applications_running=False)
    wait_running(cfg.app_name, cfg.deploy_timeout_s)
    return f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}/v1"


EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception)\b.*")


def root_cause(app) -> str:
    """Why an app failed, in one line: the last exception line of its deployments' messages (a replica's
    constructor traceback lands there), else the app's own last line ("Failed to update the deployments")."""
    for deployment in (app.deployments or {}).values():
        lines = [line.strip() for line in (deployment.message or "").splitlines()]
        raised = [line for line in lines if EXCEPTION_LINE.match(line)]
        if raised:
            return raised[-1]
    return app.message.strip().splitlines()[-1] if app.message.strip() else "no message"


def wait_running(name: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(name)
        state = app.status if app else ApplicationStatus.NOT_STARTED
        if state == ApplicationStatus.RUNNING:
            return
        if state in (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY):
            serve.delete(name)
            raise DeployError(f"serve: app '{name}' failed to start: {root_cause(app)}")
        if time.monotonic() > deadline:
            serve.delete(name)
            raise DeployError(f"serve: replicas of '{name}' not running within {timeout_s:g}s (free "
                              f"{ray.available_resources().get('CPU', 0):g} CPU); raise serve.deploy_timeout_s "
                              "or lower serve.num_cpus / replicas")
        time.sleep(0.5)


def delete(name: str, wait_s: float = 30.0) -> None:
    """Delete the app, waiting at most ``wait_s`` (a Ctrl-C must not hang on a slow replica shutdown; a
    local Ray goes down with this process anyway)."""
    serve.delete(name, _blocking=False)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and name in serve.status().applications:
        time.sleep(0.5)


def stop_detached(name: str, echo: Callable[[str], None]) -> None:
    """``rayalign serve --stop``: delete a detached app from the running cluster."""
    try:
        ray.init(address="auto", log_to_driver=False)
    except ConnectionError:
        raise UserError("--stop: no running Ray cluster to find the app on") from None
    if name not in serve.status().applications:
        raise UserError(f"--stop: no Serve app '{name}' on this cluster (serve.app_name)")
    serve.delete(name)
    echo(f"deleted the Serve app '{name}'")
