"""The Python API: one function per CLI command, each returning a small typed result. The CLI calls exactly
these (``cli.py`` adds only its flags, its terminal and its exit codes), so a driver script and ``rayalign ...``
run one code path.

Each takes a config (a YAML path, or a config object from ``load_config``) plus ``overrides``: a dict of dotted
keys (``{"training.max_steps": 20}``) or CLI-style strings (``["--training.max_steps", "20"]``). They join the
Ray a driver already runs on (``ray.init()`` in the script, ``RAY_ADDRESS``, ``ray start``, a Ray job) and start
a local one only when there is none. They raise ``rayalign.errors`` exceptions (``UserError`` and its
``ConfigError`` / ``DataError``: bad input; ``RunError``: a role failed past its restarts; ``Interrupted``: a
signal) and never exit the process or print a traceback. ``echo`` receives each progress line (``print`` by
default; pass ``lambda line: None`` for silence).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from rayalign.config import EvalConfig, JudgeConfig, RecipeConfig
from rayalign.config_io import load_config, with_overrides
from rayalign.errors import UserError

C = TypeVar("C", RecipeConfig, EvalConfig, JudgeConfig)
Overrides = dict[str, Any] | Sequence[str] | None
Echo = Callable[[str], None]


def resolve(config: str | Path | C | None, overrides: Overrides = None, kind: type[C] = RecipeConfig) -> C:
    """A config object from a path or an object, with ``overrides`` applied and the whole validated."""
    if isinstance(config, (RecipeConfig, EvalConfig, JudgeConfig)):
        if not isinstance(config, kind):
            raise UserError(f"config: a {type(config).__name__} where a {kind.__name__} is needed")
        if not overrides:
            return config
        if not isinstance(overrides, dict):
            raise UserError("overrides: with a config object, give a dict of dotted keys ({'training.max_steps': 5})")
        return with_overrides(config, overrides)
    if isinstance(overrides, dict):
        return load_config(config, (), kind=kind, updates=overrides)
    return load_config(config, list(overrides or ()), kind=kind)


def _with_model(overrides: Overrides, model: str | None) -> Overrides:
    """``overrides`` plus ``model.name_or_path`` (the ``--model`` of infer and serve)."""
    if model is None:
        return overrides
    if isinstance(overrides, dict):
        return {**overrides, "model.name_or_path": model}
    return [*(overrides or ()), "--model.name_or_path", model]


def _where(config) -> str:
    return f"{config}: " if isinstance(config, (str, Path)) else ""


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- data and models ------------------------------------------------------------------------------------

def make_data(task: str, out: str | Path, *, n: int = 100, format: str = "prompt", seed: int = 0,
              split: str = "train", force: bool = False, echo: Echo = print) -> Path:
    """Write ``n`` rows of a built-in verifiable task (``letter_count | arithmetic | countdown``; visual:
    ``colour | shape_count | shape_colour``, with their PNGs) as JSONL in ``format`` (``sft | preference | kto |
    prompt | text``; visual: ``vl_sft | vl_prompt``). ``split="test"``: letter_count's held-out words."""
    from rayalign.data.formats import VL_FORMATS, check_format
    from rayalign.data.tasks import TASKS, generate, to_row
    from rayalign.data.visual_tasks import VISUAL_TASKS, generate_visual, write_rows
    from rayalign.outputs import check_file, write_text

    out = Path(out)
    if task not in TASKS and task not in VISUAL_TASKS:
        raise UserError(f"unknown task '{task}' (known: {', '.join([*TASKS, *VISUAL_TASKS])})")
    check_format(format)
    visual = task in VISUAL_TASKS
    if visual != (format in VL_FORMATS):
        kind, takes = ("a visual", ", ".join(VL_FORMATS)) if visual else ("a text", "sft, preference, kto, prompt, text")
        raise UserError(f"--format: {task} is {kind} task; its formats are {takes}, not '{format}'")
    check_file(out, "--out", force)
    try:
        examples = (generate_visual if visual else generate)(task, n, seed, split)
    except KeyError as exc:
        raise UserError(f"--split: {exc.args[0]}") from None
    if visual:
        images = write_rows(examples, format, out)
        echo(f"wrote {n} '{format}' rows of {task} to {out}, their images in {images}")
        return out
    write_text(out, "".join(json.dumps(to_row(ex, format, i)) + "\n" for i, ex in enumerate(examples)))
    echo(f"wrote {n} '{format}' rows of {task} to {out}")
    return out


def create_tiny_model(out: str | Path, *, arch: str = "qwen2", layers: int = 2, hidden: int = 128,
                      vocab: int = 1024, seed: int = 0, force: bool = False, echo: Echo = print) -> Path:
    """Write a tiny random HF model with a task-trained BPE tokenizer (``qwen2 | llama``; vision-language:
    ``idefics3 | llava`` with their processor). It loads in HF and vLLM: for tests, demos and CI."""
    from rayalign.models.tiny import ARCHS, check_sizes, create_tiny
    from rayalign.models.tiny_vlm import VL_ARCHS, create_tiny_vlm
    from rayalign.outputs import check_dir, staged

    out = Path(out)
    if arch not in ARCHS + VL_ARCHS:
        raise UserError(f"--arch must be one of {', '.join(ARCHS + VL_ARCHS)}, got '{arch}'")
    vision = arch in VL_ARCHS
    check_sizes("qwen2" if vision else arch, hidden, vocab)  # a VLM's language model is the tiny text model
    check_dir(out, "OUT", force)
    with staged(out) as tmp:
        (create_tiny_vlm if vision else create_tiny)(tmp, arch=arch, layers=layers, hidden=hidden, vocab=vocab,
                                                     seed=seed)
    echo(f"tiny {arch} model written to {out}")
    return out


# ---- train ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainResult:
    """A finished (or stopped) training run."""
    output_dir: Path             # checkpoints, metrics.jsonl, the resolved config
    final_model: Path | None     # OUTPUT_DIR/final, a plain HF directory (safetensors); None if the run stopped early
    metrics: dict[str, Any]      # the last row of metrics.jsonl (step, loss, ...; {} when nothing was logged)
    history: list[dict[str, Any]] = field(repr=False, default_factory=list)  # every row of metrics.jsonl


def train(config: str | Path | RecipeConfig, overrides: Overrides = None, *, resume: bool = False,
          overwrite: bool = False, echo: Echo = print) -> TrainResult:
    """Train with the recipe's trainer: ``sft | pretrain | dpo | kto | reward_model`` on Ray Train, ``grpo`` on
    Ray actor roles, ``verl_grpo`` through verl. ``resume`` continues from the last checkpoint in
    ``training.output_dir``; ``overwrite`` replaces an earlier run there."""
    from rayalign.metrics import read_metrics

    cfg = resolve(config, overrides)
    flags = {**({"training.resume": "auto"} if resume else {}), **({"training.overwrite": True} if overwrite else {})}
    cfg = with_overrides(cfg, flags) if flags else cfg
    if cfg.data is None:
        raise UserError(f"{_where(config)}data: required key is missing (train needs data.train)")
    if cfg.trainer == "grpo":
        from rayalign.recipes.grpo import run
    elif cfg.trainer == "verl_grpo":
        from rayalign.backends.verl import run
    else:
        from rayalign.recipes.ray_train import run
    final = run(cfg, echo=echo)
    rows = read_metrics(cfg.training.output_dir)
    return TrainResult(Path(cfg.training.output_dir), Path(final) if final else None, rows[-1] if rows else {}, rows)


# ---- evaluate -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalResult:
    """An evaluation's ``results.json``: per task its metrics (accuracy beside the best constant answer, ...)."""
    path: Path
    results: dict[str, Any] = field(repr=False)

    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
        return self.results["tasks"]


def evaluate(config: str | Path | EvalConfig, overrides: Overrides = None, *, force: bool = False,
             echo: Echo = print) -> EvalResult:
    """Evaluate a model on the config's tasks (verifiable, multiple choice, perplexity, judge). ``force``
    replaces an existing ``results.json``."""
    from rayalign.evaluate.run import evaluate as run_eval, results_path
    from rayalign.outputs import check_file

    cfg = resolve(config, overrides, EvalConfig)
    check_file(results_path(cfg), "output_dir", force)
    return EvalResult(results_path(cfg), run_eval(cfg, echo))


# ---- infer and judge ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RowsResult:
    """A JSONL file written: each input row plus what was generated (``response``...) or judged
    (``judge_score``...)."""
    path: Path
    rows: list[dict[str, Any]] = field(repr=False)


def infer(config: str | Path | RecipeConfig | None, input: str | Path, output: str | Path,
          overrides: Overrides = None, *, model: str | None = None, force: bool = False,
          echo: Echo = print) -> RowsResult:
    """Generate for each row of ``input`` (JSONL with ``prompt`` or ``messages``) over Ray workers (the
    ``infer:`` section), writing ``output``. ``model`` (a path or hub name) stands in for a config's."""
    from rayalign import inference as run
    from rayalign.outputs import check_file

    if config is None and model is None:
        raise UserError("infer needs a config or model=PATH_OR_NAME")
    cfg = resolve(config, _with_model(overrides, model))
    check_file(Path(output), "--output", force)
    run.batch(cfg.model, cfg.infer, Path(input), Path(output), echo)
    return RowsResult(Path(output), _jsonl(Path(output)))


def judge(config: str | Path | JudgeConfig, input: str | Path, output: str | Path, overrides: Overrides = None,
          *, force: bool = False, echo: Echo = print) -> RowsResult:
    """Score each row of ``input`` (JSONL: prompt, response [, reference]) with the LLM judge of ``config``
    (a local model served on Ray Serve for the call, or an OpenAI-compatible URL), writing ``output``."""
    from rayalign.judge.dataset import score_file
    from rayalign.judge.judge import Judge
    from rayalign.judge.service import endpoint, release
    from rayalign.outputs import check_file

    cfg = resolve(config, overrides, JudgeConfig)
    check_file(Path(output), "--output", force)
    try:
        score_file(Judge(cfg, endpoint(cfg)), Path(input), Path(output), echo)
    finally:
        release(cfg)
    return RowsResult(Path(output), _jsonl(Path(output)))


# ---- serve ----------------------------------------------------------------------------------------------

@dataclass
class Server:
    """A running Serve app: ``url`` is the OpenAI base URL (``openai.OpenAI(base_url=server.url, ...)``).
    ``stop()`` deletes the app (also on leaving a ``with`` block)."""
    url: str
    model: str                 # the served model id, what requests name
    app_name: str
    api_key: str | None = field(repr=False, default=None)

    def stop(self, wait_s: float = 30.0) -> None:
        from rayalign.serve.deploy import delete

        delete(self.app_name, wait_s)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *_) -> None:
        self.stop()


def serve(config: str | Path | RecipeConfig | None = None, overrides: Overrides = None, *,
          model: str | None = None, echo: Echo = print) -> Server:
    """Deploy the OpenAI-compatible app (``serve:`` section) for ``model:`` (or ``model``, a path or hub name)
    and return once it answers. It keeps serving until ``stop()`` or until the Ray it runs on ends."""
    from rayalign import local_ray
    from rayalign.serve.deploy import api_key, deploy
    from rayalign.serve.server import model_id

    if config is None and model is None:
        raise UserError("serve needs a config or model=PATH_OR_NAME")
    cfg = resolve(config, _with_model(overrides, model))
    local_ray.ensure(log_to_driver=False)
    url = deploy(cfg.model, cfg.serve)
    name = model_id(cfg.model, cfg.serve)
    key = api_key(cfg.serve)
    echo(f"serving '{name}' at {url}" + (" (Bearer key required)" if key else ""))
    return Server(url, name, cfg.serve.app_name, key)


# ---- tune -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TuneResult:
    """A sweep: its directory, the best trial's sampled keys and last metrics, and Ray Tune's ResultGrid."""
    output_dir: Path
    best_config: dict[str, Any]
    best_metrics: dict[str, Any]
    grid: Any = field(repr=False)  # ray.tune.ResultGrid


def tune(config: str | Path | RecipeConfig, overrides: Overrides = None, *, output_dir: str | Path | None = None,
         resume: bool = False, echo: Echo = print) -> TuneResult:
    """A hyperparameter sweep on Ray Tune over any recipe key (the ``tune:`` section); every trial runs the
    recipe's own trainer. ``resume`` continues an interrupted sweep (finished trials kept)."""
    from rayalign.tune import run

    cfg = resolve(config, overrides)
    cfg = with_overrides(cfg, {"training.output_dir": str(output_dir)}) if output_dir else cfg
    if cfg.data is None:
        raise UserError(f"{_where(config)}data: required key is missing (a sweep trains: it needs data.train)")
    grid = run(cfg, echo=echo, resume=resume)
    try:
        best = grid.get_best_result(metric=cfg.tune.metric, mode=cfg.tune.mode)
    except RuntimeError:  # no trial reported the metric (their errors are in results.csv and were echoed)
        return TuneResult(Path(cfg.training.output_dir), {}, {}, grid)
    return TuneResult(Path(cfg.training.output_dir), dict(best.config or {}), dict(best.metrics or {}), grid)
