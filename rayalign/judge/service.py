"""Where a judge answers: ``judge.base_url`` (any OpenAI-compatible API, key from ``judge.api_key_env``),
or ``judge.model``, deployed on the current Ray cluster as its own Serve app (``judge.serve``: by default
app ``rayalign-judge`` at ``/judge``, beside a policy app at ``/``). The same deployment answers
``rayalign judge``, evaluation and RL rewards."""

from __future__ import annotations

import os

from rayalign.config import JudgeConfig
from rayalign.judge.judge import Endpoint


def endpoint(cfg: JudgeConfig) -> Endpoint:
    """The judge's endpoint, deploying the local judge model first when there is one (Ray must be up)."""
    if cfg.base_url is not None:
        return Endpoint(cfg.base_url, cfg.model_name or "", os.environ.get(cfg.api_key_env))
    from rayalign import local_ray
    from rayalign.serve.deploy import api_key, deploy
    from rayalign.serve.server import model_id

    assert cfg.model is not None  # config validation: exactly one of model and base_url
    local_ray.ensure(log_to_driver=False)  # joins a running cluster (RAY_ADDRESS or `ray start`), else starts one
    url = deploy(cfg.model, cfg.serve)
    return Endpoint(url, model_id(cfg.model, cfg.serve), api_key(cfg.serve))


def release(cfg: JudgeConfig) -> None:
    """Delete the local judge's Serve app (nothing to do for a remote API)."""
    if cfg.base_url is None:
        from ray import serve

        serve.delete(cfg.serve.app_name)
