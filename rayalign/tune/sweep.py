"""``rayalign tune``: a sweep on Ray Tune over any dotted recipe key, for every trainer.

    SWEEP_DIR/tune/             Ray Tune's experiment (``--resume`` restores it: finished trials are kept)
    SWEEP_DIR/trials/TRIAL_ID/  each trial's run directory, as ``rayalign train`` writes it
    SWEEP_DIR/results.csv       one row per trial, best first
    SWEEP_DIR/best_config.yaml  the best trial's whole recipe; ``rayalign train -c`` takes it as it is

Trials are Tune function trainables (``tune/trial.py``) that run the recipe's own driver. A Ray Train
trial's workers sit in Ray Train's own placement group, so Tune is told to run at most as many trials at
once as the cluster fits (``max_concurrent_trials``); a GRPO trial's roles are the trial's own placement
group bundles, so Tune places them. Schedulers: fifo, ASHA (stops poor trials early), PBT (a trial copies
a better one's checkpoint and perturbs the mutated keys).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import yaml

from rayalign import local_ray
from rayalign.config import RecipeConfig
from rayalign.errors import RunError, UserError
from rayalign.recipes.common import local_paths
from rayalign.tune import space

EXPERIMENT = "tune"
HEAD_CPU = 0.01  # the trial function itself: a driver that waits
# left free for Ray's own small tasks: with Ray Train trials packed to the last 0.2 CPU, their worker
# groups never started (the placement group's readiness check did not run; measured on 2 CPUs)
RESERVE_CPU = 0.5


def run(cfg: RecipeConfig, echo=print, resume: bool = False):
    """Run (or with ``resume`` continue) the sweep of ``cfg``; returns Ray Tune's ResultGrid."""
    from ray import tune

    from rayalign.tune.trial import run_trial

    space.check(cfg)
    cfg = _absolute(local_paths(cfg))
    sweep_dir = Path(cfg.training.output_dir)
    experiment = sweep_dir / EXPERIMENT
    local_ray.ensure()
    _check_state_api()
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=cfg.model_dump(mode="json"), sweep_dir=str(sweep_dir)), _resources(cfg))
    if resume:
        if not tune.Tuner.can_restore(str(experiment)):
            raise UserError(f"--resume: no sweep to resume in {sweep_dir} (no {EXPERIMENT}/tuner.pkl)")
        echo(f"resuming the sweep in {sweep_dir}")
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_errored=True)
    else:
        if experiment.exists():
            raise UserError(f"training.output_dir: {sweep_dir} already holds a sweep; pass --resume to continue it, "
                            "or choose another output_dir")
        tuner = tune.Tuner(trainable, param_space=space.domains(cfg), tune_config=_tune_config(cfg, echo),
                           run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(sweep_dir), verbose=1,
                                                     failure_config=tune.FailureConfig(max_failures=0)))
    results = tuner.fit()
    _write(cfg, results, sweep_dir, echo)
    return results


def _check_state_api() -> None:
    """A trial that Tune stops (ASHA, PBT, the end) is killed while Ray Train shuts its workers down; their
    placement group is then removed by Ray Train's cleaner, which polls the State API (the dashboard).
    Without it the groups leak and later trials wait for CPUs forever."""
    import ray
    from ray.util.state import list_actors

    try:
        list_actors(address=ray.get_runtime_context().gcs_address, limit=1, raise_on_missing_output=False)
    except Exception as exc:  # the state client raises several types when the dashboard is absent
        raise UserError("sweeps need Ray's dashboard (its State API frees a stopped trial's Ray Train workers): "
                        "let rayalign start Ray, or start yours with `ray start --head --include-dashboard true` "
                        f"({type(exc).__name__})") from None


def _absolute(cfg: RecipeConfig) -> RecipeConfig:
    """Trials run in Ray's own working directories: every local path made absolute."""
    from rayalign.config_io import with_overrides

    updates = {"training.output_dir": str(Path(cfg.training.output_dir).resolve())}
    for split in ("train", "eval"):
        chosen = getattr(cfg.data, split) if cfg.data else None
        for i, source in enumerate(chosen.datasets if chosen else []):
            if Path(source.path).expanduser().exists():
                updates[f"data.{split}.datasets[{i}].path"] = str(Path(source.path).expanduser().resolve())
    return with_overrides(cfg, updates)


def _resources(cfg: RecipeConfig):
    """A trial's ask: GRPO's roles ride in the trial's placement group; Ray Train makes its own."""
    from ray import tune

    if cfg.trainer != "grpo":
        return {"CPU": HEAD_CPU}
    from rayalign.placement import resource_asks

    asks = resource_asks(cfg).values()
    roles = {"CPU": sum(a[0] for a in asks), **({"GPU": sum(a[1] for a in asks)} if any(a[1] for a in asks) else {})}
    return tune.PlacementGroupFactory([{"CPU": HEAD_CPU}, roles])


def trial_slots(cfg: RecipeConfig, have: dict) -> int:
    """How many trials of ``cfg`` fit the cluster ``have`` at once; refuses a trial that does not fit."""
    if cfg.trainer == "grpo":
        from rayalign.placement import resource_asks

        asks = resource_asks(cfg).values()
        cpu, gpu = sum(a[0] for a in asks), sum(a[1] for a in asks)
        keys = "rollout.num_cpus, scaling.cpus_per_worker, reference.num_cpus, reward.num_cpus"
    else:
        s = cfg.scaling
        cpu, gpu = s.num_workers * s.cpus_per_worker, s.num_workers if s.use_gpu else 0
        keys = "scaling.num_workers, scaling.cpus_per_worker"
    cpu += HEAD_CPU
    fits = math.floor(max(0.0, have.get("CPU", 0) - RESERVE_CPU) / cpu + 1e-9)
    if gpu:
        fits = min(fits, math.floor(have.get("GPU", 0) / gpu + 1e-9))
    if fits < 1:
        ask = f"{cpu:g} CPU" + (f" and {gpu:g} GPU" if gpu else "")
        has = f"{have.get('CPU', 0):g} CPU" + (f" and {have.get('GPU', 0):g} GPU" if gpu else "")
        raise UserError(f"a trial asks for {ask} but the Ray cluster has {has} (sweeps leave {RESERVE_CPU:g} CPU "
                        f"to Ray); lower {keys}")
    return fits


def _tune_config(cfg: RecipeConfig, echo):
    import ray
    from ray import tune

    t = cfg.tune
    slots = trial_slots(cfg, ray.cluster_resources())
    concurrent = min(t.max_concurrent_trials or slots, slots)
    if t.scheduler.name == "pbt" and concurrent < 2:
        echo(f"warning: PBT compares trials that run side by side, but {concurrent} trial runs at a time here "
             f"({slots} fit the cluster): no trial will exploit another")
    from ray.tune.search import BasicVariantGenerator

    if t.search_alg == "optuna":
        try:
            from ray.tune.search import ConcurrencyLimiter
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise UserError("tune.search_alg: optuna is not installed (pip install 'rayalign[tune]')") from None
        search = ConcurrencyLimiter(OptunaSearch(seed=t.seed), max_concurrent=concurrent)
    else:  # grid and random sampling, seeded (Tune ignores max_concurrent_trials beside a given generator)
        search = BasicVariantGenerator(max_concurrent=concurrent, random_state=t.seed)
    return tune.TuneConfig(metric=t.metric, mode=t.mode, num_samples=t.num_samples, scheduler=_scheduler(cfg),
                           search_alg=search, reuse_actors=False)


def _scheduler(cfg: RecipeConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    s = cfg.tune.scheduler
    if s.name == "asha":
        # max_t one past the last report: a trial that reaches the end finishes its own run (final/) rather
        # than being stopped at its last report
        return ASHAScheduler(time_attr="training_iteration", max_t=_max_reports(cfg) + 1, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor)
    if s.name == "pbt":
        mutate = {k: v for k, v in space.mutations(cfg).items() if not s.mutations or k in s.mutations}
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=s.perturbation_interval,
                                       hyperparam_mutations=mutate, quantile_fraction=s.quantile_fraction)
    return FIFOScheduler()


def _max_reports(cfg: RecipeConfig) -> int:
    t = cfg.training
    return max(1, math.ceil((t.max_steps or 10_000) / t.logging_steps))


def _trial_id(path: str | None) -> str | None:
    """The trial's own id from its directory (TRAINABLE_TRIALID_INDEX_...): a PBT exploit copies the donor's
    last result, ``trial_id`` included, into the taker."""
    found = re.search(r"_([0-9a-f]{5}_\d{5})_", Path(path).name) if path else None
    return found[1] if found else None


def _cause(error: BaseException) -> str:
    """The root cause in a trial's error: the first exception line of its (chained, Ray-wrapped) tracebacks,
    not Ray's generic last line ("An unexpected internal error occurred ...")."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Interrupted): ", line)]
    return causes[0] if causes else (lines[-1] if lines else type(error).__name__)


def _write(cfg: RecipeConfig, results, sweep_dir: Path, echo) -> None:
    """results.csv (best first) and best_config.yaml, then the table; errors of failed trials named."""
    from rayalign.config_io import with_overrides
    from rayalign.outputs import write_text

    t = cfg.tune
    rows = []
    for result in results:
        metrics, config = result.metrics or {}, result.config or {}
        rows.append({"trial_id": _trial_id(result.path) or metrics.get("trial_id", "?"),
                     t.metric: metrics.get(t.metric), "step": metrics.get("step"),
                     "reports": metrics.get("training_iteration"), **config,
                     "error": _cause(result.error) if result.error else ""})
    scored = [r for r in rows if isinstance(r[t.metric], (int, float)) and math.isfinite(r[t.metric])]
    scored.sort(key=lambda r: r[t.metric], reverse=t.mode == "max")
    ordered = scored + [r for r in rows if r not in scored]
    columns = list(dict.fromkeys(k for r in ordered for k in r))
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(ordered)
    write_text(sweep_dir / "results.csv", buffer.getvalue())
    for row in ordered:
        shown = ", ".join(f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}"
                          for k in columns if k not in ("error",) and row.get(k) is not None)
        echo(shown + (f"  ERROR {row['error']}" if row["error"] else ""))
    if not scored:
        errors = [r["error"] for r in rows if r["error"]]
        raise RunError(f"no trial reported {t.metric}" + (f": {errors[0]}" if errors else "")
                       + f" (results in {sweep_dir / 'results.csv'})")
    best = scored[0]
    best_cfg = with_overrides(cfg, {k: best[k] for k in t.search_space})
    best_cfg = with_overrides(best_cfg, {"training.output_dir": str(sweep_dir / "best"), "tune.search_space": {}})
    write_text(sweep_dir / "best_config.yaml", yaml.safe_dump(best_cfg.model_dump(mode="json"), sort_keys=False))
    echo(f"best {t.metric} = {best[t.metric]:.6g} (trial {best['trial_id']}); wrote {sweep_dir / 'results.csv'} and "
         f"{sweep_dir / 'best_config.yaml'}")
