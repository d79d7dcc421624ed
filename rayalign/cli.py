"""The ``rayalign`` command line: train, tune, serve, infer, judge, score, evaluate, data, models, config, env.

User mistakes (``UserError``) print one ``error: ...`` line and exit 2; ``--debug`` anywhere on the
command line shows the traceback instead. Config-taking commands accept Oumi-style dotted overrides
after their options: ``rayalign train -c cfg.yaml --training.learning_rate 1e-4``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from rayalign.errors import DEBUG_ENV, Interrupted, RunError, UserError

app = typer.Typer(help="Ray-native LLM post-training.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Validate and make datasets.", no_args_is_help=True)
models_app = typer.Typer(help="Make and inspect models.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect configs.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")

OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}
ConfigOpt = typer.Option(..., "-c", "--config", help="recipe YAML file")
ForceOpt = typer.Option(False, "--force", help="replace an output that already exists")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show tracebacks for errors")) -> None:
    """rayalign: SFT, pretraining, DPO family, GRPO-family RL, evaluation, serving and an LLM judge."""


@app.command(context_settings=OVERRIDES)
def train(ctx: typer.Context, config: Path = ConfigOpt,
          resume: bool = typer.Option(False, "--resume", help="continue from the last checkpoint in output_dir"),
          overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier run in output_dir")) -> None:
    """Train with the recipe's trainer (sft | pretrain | dpo | kto | reward_model | grpo | verl_grpo)."""
    from rayalign import api

    try:
        api.train(config, ctx.args, resume=resume, overwrite=overwrite, echo=typer.echo)
    except Interrupted as exc:
        if exc.resumable:
            again = " ".join(["rayalign train -c", str(config), *ctx.args, "--resume"])
            raise Interrupted(f"{exc}; continue with: {again}", exc.signum) from exc
        raise


@app.command(context_settings=OVERRIDES)
def serve(ctx: typer.Context,
          config: Optional[Path] = typer.Option(None, "-c", "--config", help="recipe YAML (model: and serve:)"),
          model: Optional[str] = typer.Option(None, "--model", help="model path or hub name (no config needed)"),
          port: Optional[int] = typer.Option(None, "--port", help="HTTP port (serve.port)"),
          detach: bool = typer.Option(False, "--detach", help="leave the app running on the Ray cluster"),
          stop: bool = typer.Option(False, "--stop", help="delete a detached app (serve.app_name) and exit")) -> None:
    """OpenAI-compatible inference on Ray Serve (/v1/models, /v1/chat/completions, /v1/completions)."""
    from rayalign.config_io import load_config
    from rayalign.serve.deploy import stop_detached

    if config is None and model is None and not stop:
        raise UserError("serve needs -c CONFIG or --model PATH_OR_NAME")
    if config is None and model is None:
        model = "none"  # --stop finds the app by serve.app_name; no model is loaded
    extra = (["--model.name_or_path", model] if model else []) + (["--serve.port", str(port)] if port else [])
    cfg = load_config(config, extra + ctx.args)
    if stop:
        stop_detached(cfg.serve.app_name, typer.echo)
    else:
        _serve_until_ctrl_c(cfg, detach)


def _serve_until_ctrl_c(cfg, detach: bool) -> None:
    """``api.serve``, then (unless ``--detach`` leaves the app on a running cluster) wait for Ctrl-C and stop it."""
    from rayalign import api, local_ray

    if detach and local_ray.starts_local():
        raise UserError("--detach needs a running Ray cluster to leave the app on (ray start --head)")
    server = api.serve(cfg, echo=typer.echo)
    if detach:
        typer.echo(f"detached: the app '{server.app_name}' keeps running on the cluster (rayalign serve --stop to "
                   "delete it)")
        return
    typer.echo("Ctrl-C to stop")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        typer.echo("stopping")
    finally:
        server.stop()


@app.command(context_settings=OVERRIDES)
def judge(ctx: typer.Context, config: Path = typer.Option(..., "-c", "--config", help="judge YAML"),
          source: Path = typer.Option(..., "--input", "-i", help="JSONL rows: prompt, response [, reference]"),
          output: Path = typer.Option(..., "--output", "-o", help="JSONL: the rows plus judge_score etc."),
          force: bool = ForceOpt) -> None:
    """Score a dataset with an LLM judge (a local model on Ray Serve, or an OpenAI-compatible URL)."""
    from rayalign import api

    api.judge(config, source, output, ctx.args, force=force, echo=typer.echo)


@app.command()
def score(model: str = typer.Option(..., "--model", "-m", help="reward model: a one-label classifier dir or hub name"),
          source: Path = typer.Option(..., "--input", "-i", help="JSONL rows: prompt, response (or prompt, chosen, "
                                                                  "rejected)"),
          output: Path = typer.Option(..., "--output", "-o", help="JSONL: the rows plus reward_score (or "
                                                                   "reward_chosen, reward_rejected)"),
          batch_size: int = typer.Option(16, min=1, help="sequences per forward pass"),
          max_length: int = typer.Option(1024, min=2, help="prompt + response tokens scored"),
          force: bool = ForceOpt) -> None:
    """Score a dataset with a reward model; preference rows also give its pair accuracy."""
    from rayalign.evaluate.reward_model import score_file
    from rayalign.models.scoring import ScoreModel
    from rayalign.outputs import check_file

    check_file(output, "--output", force)
    score_file(lambda: ScoreModel(model, max_length=max_length, batch_size=batch_size, where="--model"), source,
               output, typer.echo)


@app.command(context_settings=OVERRIDES)
def evaluate(ctx: typer.Context,
             config: Optional[Path] = typer.Option(None, "-c", "--config", help="evaluation YAML"),
             compare: Optional[tuple[Path, Path]] = typer.Option(
                 None, "--compare", help="two results.json files to print side by side"),
             plot: Optional[Path] = typer.Option(None, "--plot", help="with --compare: the shares as a bar chart PNG"),
             force: bool = typer.Option(False, "--force", help="replace an existing results.json (or --plot file)")
             ) -> None:
    """Evaluate a model: verifiable tasks, multiple choice, perplexity, judge scores and win rates."""
    from rayalign.outputs import check_file

    if compare:
        from rayalign.evaluate.run import compare as side_by_side, plot_shares, read_results

        if plot is not None:
            if plot.suffix.lower() not in (".png", ".pdf", ".svg"):
                raise UserError(f"--plot: {plot}: give a .png, .pdf or .svg file")
            check_file(plot, "--plot", force)
        results = [read_results(path) for path in compare]
        typer.echo(side_by_side(*results))
        if plot is not None:
            typer.echo(f"wrote {plot_shares(results, plot)}")
        return
    if plot is not None:
        raise UserError("--plot goes with --compare A/results.json B/results.json")
    if config is None:
        raise UserError("evaluate needs -c CONFIG (or --compare A/results.json B/results.json)")
    from rayalign import api

    api.evaluate(config, ctx.args, force=force, echo=typer.echo)


@app.command("compare")
def compare_models(
    models: list[str] = typer.Argument(..., help="two or more models: PATH_OR_NAME or label=PATH_OR_NAME"),
    prompts: Optional[Path] = typer.Option(None, "--prompts", "-p", help="JSONL prompt rows (default: --task)"),
    task: str = typer.Option("letter_count", "--task", help="built-in task whose held-out prompts to use"),
    n: int = typer.Option(8, "--n", min=1, help="prompts (first N of the file, or N task prompts)"),
    seed: int = typer.Option(1234, help="task prompt seed"),
    reward: list[str] = typer.Option(["boxed_answer"], "--reward", "-r",
                                     help="reward function(s) scoring each answer; repeat to sum"),
    interactive: bool = typer.Option(False, "--interactive", "-I", help="send each typed prompt to every model"),
    engine: str = typer.Option("vllm", "--engine", help="vllm | hf"),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy"),
    max_new_tokens: int = typer.Option(128, min=1),
    max_model_len: int = typer.Option(1024, min=2),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="JSONL: each prompt with every answer"),
    force: bool = ForceOpt,
) -> None:
    """Put several models' answers to the same prompts side by side, with their rewards."""
    from rayalign import compare as cmp
    from rayalign.engines.base import SamplingSpec
    from rayalign.outputs import check_file

    if engine not in ("vllm", "hf"):
        raise UserError(f"--engine: '{engine}' is not one of vllm, hf")
    if output is not None and interactive:
        raise UserError("--output goes with fixed prompts, not --interactive")
    pairs = cmp.parse_models(models)
    if output is not None:
        check_file(output, "--output", force)
    rows = None if interactive else cmp.load_prompts(prompts, task, n, seed)
    scorer = cmp.reward_for(reward)
    spec = SamplingSpec(temperature=temperature, max_new_tokens=max_new_tokens, seed=0)
    contenders = cmp.open_models(pairs, engine, max_model_len)
    try:
        if interactive:
            cmp.interactive(contenders, spec, input, typer.echo)
        else:
            cmp.fixed(contenders, rows, spec, scorer, output, typer.echo)
    finally:
        cmp.close(contenders)


@app.command(context_settings=OVERRIDES)
def infer(ctx: typer.Context,
          config: Optional[Path] = typer.Option(None, "-c", "--config", help="recipe YAML (model: and infer:)"),
          model: Optional[str] = typer.Option(None, "--model", help="model path or hub name (no config needed)"),
          interactive: bool = typer.Option(False, "--interactive", "-I", help="chat in the terminal"),
          source: Optional[Path] = typer.Option(None, "--input", "-i", help="JSONL rows with prompt or messages"),
          output: Optional[Path] = typer.Option(None, "--output", "-o", help="JSONL: the rows plus response"),
          force: bool = ForceOpt) -> None:
    """Chat with a model in the terminal, or generate for a JSONL file over Ray workers."""
    from rayalign.config_io import load_config
    from rayalign import inference as run

    if config is None and model is None:
        raise UserError("infer needs -c CONFIG or --model PATH_OR_NAME")
    if interactive == (source is not None):
        raise UserError("infer needs exactly one of --interactive and --input FILE (with --output FILE)")
    if source is not None and output is None:
        raise UserError("--input needs --output FILE")
    if interactive and output is not None:
        raise UserError("--output goes with --input FILE, not --interactive")
    if not interactive:
        from rayalign import api

        api.infer(config, source, output, ctx.args, model=model, force=force, echo=typer.echo)
        return
    cfg = load_config(config, (["--model.name_or_path", model] if model else []) + ctx.args)
    run.interactive(cfg.model, cfg.infer, input, lambda text: typer.echo(text, nl=False))


@app.command(context_settings=OVERRIDES)
def tune(ctx: typer.Context, config: Path = ConfigOpt,
         output_dir: Optional[Path] = typer.Option(None, "--output_dir", "--output-dir",
                                                   help="the sweep's directory (default: training.output_dir)"),
         resume: bool = typer.Option(False, "--resume", help="continue an interrupted sweep (finished trials kept)")
         ) -> None:
    """Hyperparameter sweep on Ray Tune over any recipe key (tune: section), for every trainer."""
    from rayalign import api

    api.tune(config, ctx.args, output_dir=output_dir, resume=resume, echo=typer.echo)


@data_app.command("validate")
def data_validate(
    file: str = typer.Argument(..., help="JSONL/JSON/Parquet file, saved dataset dir or hub name"),
    fmt: str = typer.Option(..., "--format", "-f", help="sft | preference | kto | prompt | text"),
    max_report: int = typer.Option(20, help="bad rows to list"),
) -> None:
    """Check every row of a dataset; list bad rows with their line numbers."""
    from rayalign.data.formats import check_format
    from rayalign.data.loading import validate_file

    report = validate_file(file, check_format(fmt), max_report)
    for line in report.bad:
        typer.echo(line)
    if report.rows == 0:
        raise UserError(f"{file}: dataset is empty")
    if report.bad_count:
        shown = f" (first {len(report.bad)} shown)" if report.bad_count > len(report.bad) else ""
        typer.echo(f"{file}: {report.bad_count} of {report.rows} rows are bad{shown}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{file}: {report.rows} rows, all valid '{fmt}'")


@data_app.command("make")
def data_make(
    task: str = typer.Argument(..., help="letter_count | arithmetic | countdown | shape_count | shape_colour"),
    n: int = typer.Option(100, "--n", min=1, help="rows"),
    out: Path = typer.Option(..., "--out", "-o", help="output .jsonl (visual tasks: images in <stem>_images/)"),
    fmt: str = typer.Option("prompt", "--format", "-f",
                            help="sft | preference | kto | prompt | text; visual tasks: vl_sft | vl_prompt"),
    seed: int = typer.Option(0, help="generator seed"),
    split: str = typer.Option("train", help="train | test (letter_count: held-out words)"),
    force: bool = ForceOpt,
) -> None:
    """Generate a built-in verifiable task as JSONL in any data format (visual tasks: with their PNGs)."""
    from rayalign import api

    api.make_data(task, out, n=n, format=fmt, seed=seed, split=split, force=force, echo=typer.echo)


@data_app.command("pairs")
def data_pairs(
    samples: Path = typer.Argument(..., help="`rayalign infer --infer.n K` output: prompt rows with 'responses'"),
    out: Path = typer.Option(..., "--out", "-o", help="output preference .jsonl"),
    reward: list[str] = typer.Option(["boxed_answer"], "--reward", "-r",
                                     help="reward function (built-in or module:fn); repeat to sum several"),
    force: bool = ForceOpt,
) -> None:
    """Rank each prompt's sampled answers by reward: best vs. worst as a preference pair (on-policy DPO data)."""
    from rayalign.data.pairs import pairs_file
    from rayalign.outputs import check_file

    check_file(out, "--out", force)
    counts = pairs_file(samples, out, reward)
    typer.echo(f"{counts['pairs']} pairs from {counts['prompts']} prompts ({counts['all_same']} had answers that "
               f"all scored the same); wrote {out}")


@models_app.command("create-tiny")
def models_create_tiny(
    out: Path = typer.Argument(..., help="output directory"),
    arch: str = typer.Option("qwen2", help="qwen2 | llama | idefics3 | llava (the last two: vision-language models with their processor)"),
    layers: int = typer.Option(2, min=1), hidden: int = typer.Option(128, min=64),
    vocab: int = typer.Option(1024, help="BPE vocabulary size (upper bound)"),
    seed: int = typer.Option(0),
    force: bool = ForceOpt,
) -> None:
    """Write a tiny random HF model with a task-trained BPE tokenizer (loads in HF and vLLM)."""
    from rayalign import api

    api.create_tiny_model(out, arch=arch, layers=layers, hidden=hidden, vocab=vocab, seed=seed, force=force,
                          echo=typer.echo)


@config_app.command("explain", context_settings=OVERRIDES)
def config_explain(ctx: typer.Context, config: Path = ConfigOpt) -> None:
    """Print the resolved config with each field's doc and the derived batch arithmetic."""
    from rayalign.config_io import explain, load_config

    typer.echo(explain(load_config(config, ctx.args)))


@app.command()
def env() -> None:
    """Versions, devices and whether a Ray cluster is reachable."""
    from rayalign.environment import describe

    typer.echo(describe())


def _settle_output() -> None:
    """Before our last line: stop Ray's forwarding of worker output (a progress bar redrawn or a worker's
    log line arriving after it would bury it) and clear the bars it draws."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    ray.shutdown()
    from ray.experimental import tqdm_ray

    manager = tqdm_ray._manager  # the driver's renderer of worker bars; None when no worker drew one
    for group in getattr(manager, "bar_groups", {}).values():
        for bar in group.bars_by_uuid.values():
            bar.bar.leave = False  # erase it rather than redraw it last, at exit
            bar.bar.close()
        group.bars_by_uuid.clear()
    sys.stdout.flush()


def _fail(message: str, code: int) -> None:
    _settle_output()
    typer.echo(message, err=True)
    sys.exit(code)


def main(argv: Optional[list[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if debug:
        os.environ[DEBUG_ENV] = "1"
    try:
        code = app(args=args, prog_name="rayalign", standalone_mode=False)
    except UserError as exc:
        if debug:
            raise
        _fail(f"error: {exc}", 2)
    except RunError as exc:
        if debug:
            raise
        _fail(f"error: {exc}", 1)
    except Interrupted as exc:
        if debug:
            raise
        _fail(str(exc), 128 + exc.signum)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # typer's own click: unknown command, missing or bad option
        if debug:
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help went to stdout; its text is no error line
            message = "missing command (listed above)"
        else:
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        typer.echo(f"error: {message}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
