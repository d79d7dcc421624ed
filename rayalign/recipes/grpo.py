"""GRPO-family online RL on Ray actor roles, driven by this one controller.

    rayalign train -c configs/recipes/tiny/grpo.yaml        # trainer: grpo

One step, as in DeepSeekMath's GRPO (Shao et al. 2024, Alg. 1):

    prompts    = the next algorithm.prompts_per_step rows (a seeded order: the step count is the data position)
    samples    = group_size completions per prompt from the rollout engines, with their tokens' log-probs
    rewards    = the weighted reward functions, on the reward workers, plus the reward models' scores
                 (reward.models, on their own actors) and an LLM judge's verdict when reward.judge names
                 one (a local judge runs as its own Ray Serve app)
    advantages = per group (algorithm.name picks grpo | dr_grpo | rloo | reinforce_pp; dapo, gspo use grpo's)
    ref        = log pi_ref of every sampled token (only when kl_coef > 0)
    learn      = ppo_epochs x mini-batches of the algorithm's loss on the FSDP2 learner group
    sync       = learner weights -> every engine, fingerprint-verified

Each phase runs inside a timer and lands in ``metrics.jsonl`` with the step's rewards and the learner's
metrics (loss, kl, mismatch_kl, entropy, clip fraction). Which actor owns a phase: ``workers/roles.py``.
With ``algorithm.async_steps: 1`` the next step's generation runs beside this step's learning
(``one_step_off.py``); ``step_time_s`` is then wall time, not the sum of the phases.

Deviations, on purpose: DAPO's dynamic sampling drops the groups whose rewards are all equal but does not
sample more prompts to refill the batch (the step trains on fewer samples; with none left it is skipped),
which keeps the data position a pure function of the step and resume exact. Sampling seeds are a function
of (seed, step), so with the HF engine N steps straight equal N/2 + resume + N/2; vLLM's per-request seeds
make its sampling reproducible too, but its batched CPU kernels may differ in the last bits between runs.
"""

from __future__ import annotations

import json
import math
import shutil
from functools import partial
from pathlib import Path

import yaml
from tqdm import tqdm

from rayalign import local_ray
from rayalign.checkpoint import MODEL, RUN_NAME, TrainerState, checkpoints
from rayalign.config import JudgeConfig, RecipeConfig
from rayalign.config_io import load_config
from rayalign.data.collate import fit_prompt
from rayalign.data.formats import image_parts
from rayalign.data.images import open_image
from rayalign.data.loading import load_split, row_location
from rayalign.data.tokenize import Overlong
from rayalign.data.vl_tokenize import prompt_ids as vl_prompt_ids
from rayalign.errors import DataError, RunError, UserError
from rayalign.judge.templates import resolve
from rayalign.metrics import MetricsLog, RoleGauges
from rayalign.models.checks import check_model, check_score_model
from rayalign.models.loading import load_tokenizer
from rayalign.models.vlm import load_processor
from rayalign.recipes.common import check_step_fits, local_paths
from rayalign.recipes.interrupt import GracefulStop
from rayalign.recipes.one_step_off import IN_FLIGHT, Generated, OneStepOff
from rayalign.recipes.grpo_step import async_step, engine_prompt, rl_step, sampling
from rayalign.recipes.output_dir import Claim, check_unfinished, claim
from rayalign.rewards.registry import WeightedReward
from rayalign.training.batching import DataOrder
from rayalign.training.guards import RewardFailures
from rayalign.workers.group import RoleDied, RoleTimeout
from rayalign.workers.roles import RLRoles


def prepare_prompts(cfg: RecipeConfig, tokenizer, rows, echo=print) -> list[dict]:
    """Each prompt row as its token ids (its end, leaving room for ``max_new_tokens``; longer prompts are
    noted through ``echo``), the prompt as the reward functions see it, and the row's other fields as
    their metadata. A step of more prompts than there are is refused. ``vl_prompt`` rows (``tokenizer`` is
    then the processor) also carry their images, opened here, and are never cut (``vl_prompt``)."""
    split = cfg.data.train
    max_length, room = split.max_length, cfg.rollout.max_new_tokens
    over = Overlong("data.train", f"{max_length - room} tokens (data.train.max_length {max_length} - "
                                  f"rollout.max_new_tokens {room})")
    prompts = []
    for i, row in enumerate(rows):
        prompt = {"prompt": row["prompt"], "metadata": {k: v for k, v in row.items() if k != "prompt" and v is not None}}
        if split.format == "vl_prompt":
            prompt.update(vl_prompt(tokenizer, row, max_length - room, split.max_image_side,
                                    partial(row_location, rows, i)))
        else:
            ids, cut = fit_prompt(tokenizer, row["prompt"], max_length - room)
            over.add(i, f"were cut to their last {max_length - room} tokens" if cut else None)
            prompt["ids"] = ids
        prompts.append(prompt)
    for note in over.notes(partial(row_location, rows), unit="prompts"):
        echo(note)
    check_step_fits(cfg, len(prompts))
    return prompts


def vl_prompt(processor, row: dict, room: int, max_side: int | None, where) -> dict:
    """A ``vl_prompt`` row's ids (image tokens expanded), images and template ids (``ImagePrompt``); one longer than ``room`` is refused, naming the
    row: cutting it could cut an image."""
    images = tuple(open_image(part["image"], max_side=max_side) for _, part in image_parts(row, "vl_prompt"))
    ids, template_ids = vl_prompt_ids(processor, row["prompt"], list(images))
    if len(ids) > room:
        raise DataError(f"data.train: {where()}: the prompt is {len(ids)} tokens with its image tokens, over the "
                        f"{room} left by data.train.max_length - rollout.max_new_tokens; raise max_length (or set "
                        "data.train.max_image_side)")
    return {"ids": ids, "images": images, "template_ids": template_ids}


def reward_judge(cfg: RecipeConfig) -> JudgeConfig | None:
    """The judge of ``reward.judge``, loaded (and its errors raised) before anything starts."""
    if cfg.reward.judge is None:
        return None
    judge = load_config(cfg.reward.judge, kind=JudgeConfig)
    if resolve(judge)[1] == "pairwise":
        raise UserError(f"reward.judge: {cfg.reward.judge} is a pairwise judge; a reward needs one that "
                        "scores a single response (score, yes_no or json)")
    return judge


def run(cfg: RecipeConfig, echo=print, reporter=None) -> Path | None:
    """Train ``cfg`` (trainer: grpo); returns ``OUTPUT_DIR/final`` (None when stopped early). ``reporter``: a
    sweep trial's (``tune/trial.py``), which gets every logged step."""
    cfg = local_paths(cfg)
    t, a = cfg.training, cfg.algorithm
    WeightedReward(cfg.reward.functions)  # unknown rewards fail here, before the data, model or any actor
    for i, model in enumerate(cfg.reward.models):
        check_score_model(model.path, f"reward.models[{i}].path")
    if a.name == "ppo" and cfg.critic.init is not None:
        check_score_model(cfg.critic.init, "critic.init", policy=cfg.model)
    judge = reward_judge(cfg)
    tokenizer = load_processor(cfg.model) if cfg.data.train.format == "vl_prompt" else load_tokenizer(cfg.model)
    check_model(cfg.model)  # damaged files, LoRA targets: before any actor loads it
    prompts = prepare_prompts(cfg, tokenizer, load_split(cfg.data.train, t.seed), echo)
    max_steps = t.max_steps or max(1, math.ceil(t.num_epochs * len(prompts) / a.prompts_per_step))
    with claim(cfg, echo) as c:
        check_unfinished(c, max_steps)
        local_ray.ensure()
        out = c.out
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        echo(f"grpo ({a.name}): {len(prompts)} prompts, {max_steps} steps of {a.prompts_per_step} x "
             f"{a.group_size}" + (f", resuming after step {c.state.step}" if c.state else ""))
        with GracefulStop(out, tqdm.write) as stop:  # after ray.init, which sets its own SIGTERM handler
            roles = RLRoles(cfg, max_steps, cfg.data.train.max_length,
                            str(c.resume_from) if c.resume_from else None, judge, notify=tqdm.write)
            try:
                pad_id = getattr(tokenizer, "tokenizer", tokenizer).pad_token_id  # a processor holds its tokenizer
                state = _train(roles, cfg, prompts, max_steps, c, pad_id, stop, reporter)
            finally:
                roles.shutdown()
        if stop.requested:
            saved = checkpoints(out)
            raise stop.stopped(state.step, max_steps, saved[-1] if saved else None)
        if state.step < max_steps:
            echo(f"stopped after step {state.step} of {max_steps}; continue with --resume")
            return None
        final = out / "final"
        shutil.rmtree(final, ignore_errors=True)
        shutil.copytree(checkpoints(out)[-1] / MODEL, final)
        (out / "trainer_state.json").write_text(json.dumps(state.__dict__))
        echo(f"final model in {final}")
        return final


def _train(roles: RLRoles, cfg: RecipeConfig, prompts: list[dict], max_steps: int, c: Claim,
           pad_id: int, stop: GracefulStop, reporter=None) -> TrainerState:
    t, a, out = cfg.training, cfg.algorithm, c.out
    state = roles.restored_state
    roles.sync()  # engines start from the model on disk; from here on they run the learner's weights
    order = DataOrder(len(prompts), a.prompts_per_step, t.seed, cfg.data.train.shuffle)
    stop_at = min(max_steps, state.step + (t.stop_after_steps or max_steps))
    log = MetricsLog(out, state.step)
    bar = tqdm(total=max_steps, initial=state.step, desc="grpo", unit="step")
    failures = RewardFailures(cfg.reward.max_failure_share, cfg.reward.failure_patience)
    gauges = RoleGauges(roles.run)
    saved = state.step
    rows_of = lambda step: [prompts[i] for i in order.step_indices(step)]  # noqa: E731
    schedule = one_step_off(roles, cfg, rows_of, c.resume_from, state.step, max_steps)

    def save() -> None:
        # one-step-off: the checkpoint carries the next step's samples (made with weights it no longer has)
        extra = {IN_FLIGHT: schedule.pending(state.step).to_json()} if schedule and state.step < max_steps else None
        roles.save(str(out / RUN_NAME / f"checkpoint-{state.step:06d}"), state, t.save_total_limit, c.run, extra)

    stop.in_loop = True
    try:
        while state.step < stop_at and not stop.requested:
            try:
                rows = rows_of(state.step)
                if schedule is None:
                    metrics = rl_step(roles, cfg, rows, state.step, pad_id, failures)
                else:
                    metrics = async_step(roles, schedule, cfg, rows, state.step, state.step + 1 < stop_at, pad_id,
                                         failures)
                gauges.observe(metrics, a.prompts_per_step * a.group_size, roles.restarts())
                state.step += 1
                state.samples_seen += a.prompts_per_step
                state.epoch = state.samples_seen / len(prompts)
                metrics["epoch"] = state.epoch
                if state.step % t.logging_steps == 0 or state.step == stop_at or stop.requested:
                    log.log(state.step, metrics)
                bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", step_s=f"{metrics['step_time_s']:.1f}")
                bar.update(1)
                if state.step == stop_at or stop.requested or (t.save_steps and state.step % t.save_steps == 0):
                    save()
                    saved = state.step
                if reporter is not None and (state.step % t.logging_steps == 0 or saved == state.step):
                    reporter.step({"step": state.step, **{k: v for k, v in metrics.items() if math.isfinite(v)}},
                                  out / RUN_NAME / f"checkpoint-{state.step:06d}" if saved == state.step else None)
            except RoleDied as exc:
                if exc.role not in ("learner", "critic"):
                    raise
                if 0 <= t.max_failures <= roles.learner_restarts:
                    raise RoleDied(f"{exc}; stopping: {roles.learner_restarts} learner restart(s) already "
                                   f"(training.max_failures={t.max_failures})", "learner") from None
                last = checkpoints(out)
                limit = "no limit" if t.max_failures < 0 else f"of at most {t.max_failures}"
                groups = "the learners and the critic" if roles.critics else "the learners"
                tqdm.write(f"{exc}; rebuilding {groups} from {last[-1].name if last else 'the initial model'} "
                           f"(restart {roles.learner_restarts + 1}, {limit})")
                state = roles.rebuild_learners(str(last[-1]) if last else None)
                if schedule is not None:
                    schedule.close()
                    schedule = one_step_off(roles, cfg, rows_of, last[-1] if last else None, state.step, max_steps)
                log.close()
                log, saved = MetricsLog(out, state.step), state.step  # steps after it are logged again, once
                bar.n = state.step
                bar.refresh()
    except RunError as exc:
        # Another role failed or hung, not the learners: unless they already took the failed step's update,
        # they hold exactly the finished steps, kept as a checkpoint to resume from.
        learners_answer = not (isinstance(exc, (RoleTimeout, RoleDied)) and exc.role in ("learner", "critic"))
        if state.step > saved and roles.updates == state.step and learners_answer:
            if schedule is not None:  # its generation may be what failed: a resume regenerates those samples
                schedule.close()
                schedule = None
            save()
            saved = state.step
        where = f"; continue from checkpoint-{saved:06d} with --resume" if saved else ""
        raise RunError(f"{exc}\nstopped after step {state.step} of {max_steps}{where}") from None
    finally:
        if schedule is not None:
            schedule.close()
        bar.close()
        log.close()
    return state


def one_step_off(roles: RLRoles, cfg: RecipeConfig, rows_of, checkpoint, step: int,
                 max_steps: int) -> OneStepOff | None:
    """The one-step-off schedule when ``algorithm.async_steps`` is 1, with the in-flight samples that
    ``checkpoint`` (resumed from) holds for ``step``."""
    if not cfg.algorithm.async_steps:
        return None
    restored = Generated.read(checkpoint, step) if checkpoint else None
    if checkpoint and restored is None and step < max_steps:
        tqdm.write(f"{Path(checkpoint).name} holds no in-flight samples for step {step + 1}: generating them "
                   "with its weights (not the older ones the uninterrupted run would have used)")
    return OneStepOff(roles, lambda s: [engine_prompt(row) for row in rows_of(s)], partial(sampling, cfg), restored)
