"""One Tune trial: the recipe's own driver (``recipes/ray_train.py`` or ``recipes/grpo.py``) on the trial's
config, in its own run directory ``SWEEP_DIR/trials/TRIAL_ID`` (as ``rayalign train`` writes it), reporting
every logged step to Tune.

Ray Train trials: the workers report each logged step to their controller; a Ray Train callback puts rank
0's metrics (and a checkpoint's path) on a queue; the trial's thread, waiting on ``fit``, takes them off and
calls ``tune.report``. GRPO trials report from the driver loop itself. With PBT a checkpoint goes with
each report that has one, so an exploit can copy it; a trial that starts with a Tune checkpoint (PBT's
exploit, or a resumed sweep) continues from it, else from its own run directory's last checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ray import tune
from ray.train import UserCallback
from ray.util.queue import Empty, Queue

from rayalign.checkpoint import MODEL, RUN_NAME, checkpoints, read_state
from rayalign.config import RecipeConfig
from rayalign.errors import UserError


class _ToQueue(UserCallback):
    """On the Ray Train controller: rank 0's metrics and the checkpoint's path, for the trial's thread."""

    def __init__(self, queue: Queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        self.queue.put({"metrics": metrics[0], "checkpoint": checkpoint.path if checkpoint else None})


class TrialReporter:
    def __init__(self, metric: str, with_checkpoints: bool):
        self.metric, self.with_checkpoints = metric, with_checkpoints
        self.queue: Queue | None = None
        self.reports = 0

    def train_callbacks(self) -> list:
        self.queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
        return [_ToQueue(self.queue)]

    def pump(self, timeout: float) -> None:
        """Forward what the Ray Train controller queued (waits up to ``timeout`` for the first)."""
        while True:
            try:
                item = self.queue.get(timeout=timeout)
            except Empty:
                return
            self.step(item["metrics"], item["checkpoint"])
            timeout = 0.0

    def step(self, metrics: dict, checkpoint: str | Path | None) -> None:
        if self.metric not in metrics:
            if self.reports == 0 and not self.metric.startswith("eval_"):
                logged = ", ".join(sorted(k for k in metrics if k != "step"))
                raise UserError(f"tune.metric: this trial does not log '{self.metric}'; it logs: {logged}")
            return  # eval_* comes with the eval steps only
        self.reports += 1
        keep = checkpoint is not None and self.with_checkpoints
        tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(str(checkpoint)) if keep else None)


def run_trial(config: dict, base: dict, sweep_dir: str) -> None:
    """The Tune trainable: ``config`` holds the sampled dotted keys."""
    from rayalign.config_io import with_overrides

    trial_id = tune.get_context().get_trial_id()
    out = Path(sweep_dir) / "trials" / trial_id
    cfg = with_overrides(RecipeConfig.model_validate(base), {**config, "training.output_dir": str(out)})
    cfg = with_overrides(cfg, _start(cfg, out))
    if _finished(cfg, out):  # PBT's exploit at a last report handed over a finished run: it is this trial's end
        return
    reporter = TrialReporter(cfg.tune.metric, cfg.tune.scheduler.name == "pbt")
    if cfg.trainer == "grpo":
        from rayalign.recipes.grpo import run
    else:
        from rayalign.recipes.ray_train import run
    run(cfg, echo=lambda line: print(f"[{trial_id}] {line}"), reporter=reporter)


def _start(cfg: RecipeConfig, out: Path) -> dict:
    """How the trial starts: from a Tune checkpoint (PBT's exploit hands over another trial's; a restarted
    or resumed trial gets its own back), from its own run directory's last checkpoint, or afresh."""
    given = tune.get_checkpoint()
    # Tune keeps a trial's checkpoints in its directory TRAINABLE_TRIALID_INDEX_PARAMS_DATE
    if given is not None and f"_{tune.get_context().get_trial_id()}_" not in Path(given.path).parent.name:
        # an exploit: the run goes on as the donor's. This trial's own checkpoints and final model are
        # another lineage and go; its metrics up to the donor's step stay (resume keeps rows <= that step)
        with given.as_directory() as ckpt:
            step = read_state(ckpt).step
            for name in ("final", "trainer_state.json", RUN_NAME):
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            shutil.copytree(ckpt, out / RUN_NAME / f"checkpoint-{step:06d}")
        return {"training.resume": "auto"}
    if checkpoints(out):  # its own Tune checkpoint is a copy of one of these; the newest complete one wins
        return {"training.resume": "auto"}
    return {"training.overwrite": True}  # a trial restarted before its first checkpoint


def _finished(cfg: RecipeConfig, out: Path) -> bool:
    """A run directory whose newest checkpoint is at ``training.max_steps``: its model becomes final/ (Tune
    keeps the last result PBT copied with it)."""
    saved = checkpoints(out)
    if not (cfg.training.max_steps and saved and read_state(saved[-1]).step >= cfg.training.max_steps):
        return False
    shutil.rmtree(out / "final", ignore_errors=True)
    shutil.copytree(saved[-1] / MODEL, out / "final")
    return True
