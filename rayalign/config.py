"""Typed config sections. Every recipe is one :class:`RecipeConfig` composed of small frozen sections.

Each worker receives only the section it needs (the learner its ``TrainingConfig``, a rollout worker
its ``RolloutConfig``), never the whole recipe. Extra keys are forbidden everywhere: a typo is an
error, not a silently ignored setting. Every field carries a one-line doc that ``rayalign config
explain`` prints next to the resolved value.

Loading (YAML + dotted overrides, errors naming file:line and key path) lives in ``config_io.py``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DataFormat = Literal["sft", "preference", "kto", "prompt", "text", "vl_sft", "vl_prompt"]
Trainer = Literal["sft", "pretrain", "dpo", "kto", "reward_model", "grpo", "verl_grpo", "vl_sft"]
RL_TRAINERS = ("grpo", "verl_grpo")  # online RL: rayalign's roles, or verl's trainer (backends/verl.py)
AttnImplementation = Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"]


class Section(BaseModel):
    """Base of every config section: frozen, no extra keys, defaults validated too."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    def default_note(self, field: str) -> str:
        """How ``config explain`` marks a field the user left unset."""
        return "default"


class LoraConfig(Section):
    r: int = Field(8, gt=0, description="LoRA rank")
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the LoRA branch")
    target_modules: list[str] | str = Field(
        "all-linear", description="module names to adapt, or 'all-linear' (peft's shorthand)"
    )
    save_merged: bool = Field(True, description="also save a merged full model (vLLM-loadable) beside the adapter")


class ModelConfig(Section):
    name_or_path: str = Field(..., min_length=1, description="HF hub name or local HF model directory")
    tokenizer: str | None = Field(None, description="tokenizer name or path; default: same as the model")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="parameter dtype when loading"
    )
    trust_remote_code: bool = Field(False, description="run model code shipped with the checkpoint")
    attn_implementation: AttnImplementation | None = Field(
        "sdpa", description="transformers attention backend; null: transformers' default")
    lora: LoraConfig | None = Field(None, description="LoRA adapters via peft; null = full fine-tuning "
                                    "(a vision-language model: on its language model only)")
    freeze_vision: bool = Field(False, description="vision-language models: keep the vision tower's weights fixed "
                                "(the projector and the language model train)")


class DatasetSource(Section):
    path: str = Field(
        ..., min_length=1,
        description="local .jsonl/.json/.parquet file, a saved HF dataset dir, or an HF hub name",
    )
    split: str = Field("train", description="split to read (hub datasets and saved DatasetDicts)")
    revision: str | None = Field(None, description="hub dataset revision (branch, tag or commit) to pin; "
                                                   "null: the default branch")
    weight: float = Field(1.0, gt=0, description="mixture weight relative to the other sources")
    limit: int | None = Field(None, gt=0, description="use only the first N rows")


class DataSplitConfig(Section):
    format: DataFormat = Field(..., description="row format: sft | preference | kto | prompt | text | vl_sft | vl_prompt")
    datasets: list[DatasetSource] = Field(..., min_length=1, description="sources, mixed by weight")
    mixture: Literal["first_exhausted", "all_exhausted"] = Field(
        "first_exhausted", description="when a weighted mixture stops (HF interleave_datasets)"
    )
    shuffle: bool = Field(True, description="shuffle rows (seeded by training.seed)")
    max_length: int = Field(1024, gt=0, description="tokens per sequence; longer rows are truncated")
    max_image_side: int | None = Field(
        None, gt=0, description="vl formats: an image whose longer side exceeds this many pixels is downscaled to it "
        "(aspect kept) before the processor, bounding its tokens on dynamic-resolution models; null: as stored")
    packing: bool = Field(False, description="pack several rows into each max_length sequence")


class DataConfig(Section):
    train: DataSplitConfig = Field(..., description="training data")
    eval: DataSplitConfig | None = Field(None, description="held-out data for eval loss / metrics")


class TrainingConfig(Section):
    output_dir: str = Field("outputs/run", description="where metrics, checkpoints and final model go")
    seed: int = Field(42, description="seed for data order, init and sampling")
    learning_rate: float = Field(1e-5, gt=0, description="peak learning rate")
    lr_scheduler: Literal["constant", "cosine", "linear"] = Field("cosine", description="lr schedule")
    warmup_steps: int = Field(0, ge=0, description="linear warmup steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; null disables")
    micro_batch_size: int = Field(1, gt=0, description="sequences per worker per forward/backward")
    gradient_accumulation_steps: int = Field(1, gt=0, description="micro batches per optimizer step")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; overrides num_epochs")
    num_epochs: float = Field(1.0, gt=0, description="passes over the training data")
    logging_steps: int = Field(1, gt=0, description="log metrics every N steps")
    eval_steps: int | None = Field(None, gt=0, description="evaluate every N steps; null = at the end")
    save_steps: int | None = Field(None, gt=0, description="checkpoint every N steps; null = at the end")
    save_total_limit: int | None = Field(2, gt=0, description="checkpoints kept; null keeps all")
    resume: Literal["never", "auto"] = Field("never", description="auto: continue from the last checkpoint (its "
                                             "step, optimizer state and schedule, at this recipe's learning_rate)")
    overwrite: bool = Field(False, description="replace an earlier run in output_dir (its final model, metrics "
                            "and checkpoints); without it a used output_dir is refused")
    stop_after_steps: int | None = Field(
        None, gt=0, description="end this launch after N steps (checkpointed; --resume continues); "
        "for time-limited jobs. The schedule still spans max_steps")
    mixed_precision: Literal["no", "bf16"] = Field(
        "no", description="bf16: the forward under bfloat16 autocast (weights, gradients and optimizer state stay "
        "in model.dtype), as TRL's bf16=True; fast on GPUs and on CPUs with AMX / avx512-bf16")
    max_failures: int = Field(0, ge=-1, description="worker-failure restarts from the last checkpoint (Ray Train "
                              "workers; GRPO's learner group); -1 = no limit")


class DeepSpeedSection(Section):
    zero_stage: Literal[1, 2, 3] = Field(2, description="ZeRO stage: 1 shards the optimizer state, 2 also the "
                                         "gradients, 3 also the parameters")
    offload_optimizer: bool = Field(False, description="keep the optimizer state in CPU memory (DeepSpeedCPUAdam)")
    offload_params: bool = Field(False, description="ZeRO-3: keep the parameters in CPU memory between uses")


class ScalingConfig(Section):
    num_workers: int = Field(1, gt=0, description="Ray Train workers (one torch.distributed rank each)")
    use_gpu: bool = Field(False, description="one GPU per worker, nccl backend; else CPU with gloo")
    cpus_per_worker: float = Field(1.0, gt=0, description="Ray CPUs reserved per worker")
    torch_threads: int | None = Field(None, gt=0, description="torch intra-op threads per worker")
    strategy: Literal["fsdp", "ddp", "deepspeed"] = Field(
        "fsdp", description="fsdp = FSDP2 fully_shard; ddp; deepspeed = DeepSpeed ZeRO (scaling.deepspeed)")
    deepspeed: DeepSpeedSection = Field(default_factory=lambda: DeepSpeedSection(),
                                        description="strategy deepspeed: ZeRO stage and offload")
    deepspeed_config: str | dict | None = Field(
        None, description="strategy deepspeed: a DeepSpeed JSON file (or its content inline) merged under the typed "
        "fields; a key both set must agree (\"auto\" takes the recipe's)")

    @model_validator(mode="after")
    def _deepspeed_fields_need_deepspeed(self) -> "ScalingConfig":
        used = sorted({"deepspeed", "deepspeed_config"} & self.model_fields_set)
        if self.strategy != "deepspeed" and used and (self.deepspeed_config or self.deepspeed != DeepSpeedSection()):
            raise ValueError(f"{used[0]} is set but strategy is {self.strategy}; set strategy: deepspeed")
        return self


class PreferenceConfig(Section):
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "simpo", "orpo", "kto"] = Field(
        "sigmoid", description="DPO-family loss"
    )
    beta: float = Field(0.1, gt=0, description="strength of the implicit KL constraint")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cDPO / robust label noise")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO target reward margin")
    desirable_weight: float = Field(1.0, gt=0, description="KTO weight of desirable examples")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO weight of undesirable examples")
    reference: Literal["precompute", "online"] = Field(
        "precompute", description="reference log-probs: one pass before training, or per batch"
    )
    center_rewards_coefficient: float | None = Field(
        None, gt=0, description="reward_model: weight of the mean (r_chosen + r_rejected)^2 term that keeps scores "
        "centred on 0 (Eisenstein et al. 2023; TRL's RewardTrainer option of the same name); null = off")


# Each algorithm's published hyperparameters: the one table an unset ``algorithm`` field resolves from
# (``rayalign config explain`` marks such values "(<name> default: <paper>)"). Deviations are deliberate and
# recorded beside the value; README.md's algorithm table mirrors this one.
ALGORITHM_PAPERS: dict[str, str] = {
    "grpo": "DeepSeekMath, Shao et al. 2024",
    "dr_grpo": "Dr. GRPO, Liu et al. 2025",
    "dapo": "DAPO, Yu et al. 2025",
    "gspo": "GSPO, Zheng et al. 2025",
    "rloo": "RLOO, Ahmadian et al. 2024",
    "reinforce_pp": "REINFORCE++, Hu 2025",
    "ppo": "InstructGPT, Ouyang et al. 2022",
}
ALGORITHM_DEFAULTS: dict[str, dict[str, Any]] = {
    # eps 0.2, KL beta 0.04 with the k3 estimator in the loss, 1/G sum_i 1/|o_i| sum_t (eq. 3)
    "grpo": dict(clip_low=0.2, clip_high=0.2, kl_coef=0.04, kl_estimator="k3",
                 loss_agg="seq-mean-token-mean", dynamic_sampling=False),
    # GRPO's eps; no KL (beta 0 in the paper's Oat-Zero recipe); token sum / (N x max_new_tokens)
    "dr_grpo": dict(clip_low=0.2, clip_high=0.2, kl_coef=0.0, kl_estimator="k3",
                    loss_agg="seq-mean-token-sum-norm", dynamic_sampling=False),
    # clip-higher, no KL, token-level loss, dynamic sampling (the overlong buffer stays opt-in: its
    # length, 4096 of 20480 tokens in the paper, only means something against rollout.max_new_tokens)
    "dapo": dict(clip_low=0.2, clip_high=0.28, kl_coef=0.0, kl_estimator="k3",
                 loss_agg="token-mean", dynamic_sampling=True),
    # the sequence ratio's clip range (3e-4 left, 4e-4 right), no KL, 1/G sum_i over sequences
    "gspo": dict(clip_low=3e-4, clip_high=4e-4, kl_coef=0.0, kl_estimator="k3",
                 loss_agg="seq-mean-token-mean", dynamic_sampling=False),
    # REINFORCE on whole sequences (sum of token log-probs); the paper has no clip, which on-policy (one
    # update per step, our default) never acts anyway; its beta x KL sits in the reward, tuned per task,
    # and rayalign has no reward-side KL: the default is none, kl_coef adds a loss-side one
    "rloo": dict(clip_low=0.2, clip_high=0.2, kl_coef=0.0, kl_estimator="k3",
                 loss_agg="seq-mean-token-sum", dynamic_sampling=False),
    # PPO's clip, token-level loss; the paper's per-token k1 KL sits in the reward, which rayalign has no
    # place for: the KL is that of the author's REINFORCE++-baseline recipe (OpenRLHF), k2 in the loss at 1e-3
    "reinforce_pp": dict(clip_low=0.2, clip_high=0.2, kl_coef=0.001, kl_estimator="k2",
                         loss_agg="token-mean", dynamic_sampling=False),
    # PPO's clip 0.2; InstructGPT's per-token KL penalty beta 0.02 (k1, log pi - log pi_ref) folded into the
    # reward, not the loss; per-token advantages averaged over tokens
    "ppo": dict(clip_low=0.2, clip_high=0.2, kl_coef=0.02, kl_estimator="k1",
                loss_agg="token-mean", dynamic_sampling=False),
}
# Settings an algorithm's definition fixes: a user value other than the table's is an error, not ignored.
ALGORITHM_FIXED: dict[str, dict[str, str]] = {
    "dr_grpo": {"loss_agg": "the token sum / (N x max_new_tokens) is the paper's fix for GRPO's length bias"},
    "dapo": {"loss_agg": "the token-level loss is one of DAPO's techniques",
             "kl_coef": "the DAPO paper drops the KL term"},
    "gspo": {"loss_agg": "one clipped ratio per sequence, averaged over sequences"},
    "ppo": {"loss_agg": "GAE gives one advantage per token, averaged over tokens"},
}
LossAgg = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


class AlgorithmConfig(Section):
    """RL hyperparameters. Fields left unset (or null) take the chosen algorithm's published value from
    :data:`ALGORITHM_DEFAULTS`, resolved at validation; a value the user sets always wins, and a setting
    the algorithm fixes (:data:`ALGORITHM_FIXED`) may only be set to that value."""

    name: Literal["grpo", "dr_grpo", "dapo", "gspo", "rloo", "reinforce_pp", "ppo"] = Field(
        "grpo", description="policy-gradient variant (ppo: with a critic role, see critic)"
    )
    prompts_per_step: int = Field(8, gt=0, description="prompts sampled per RL step")
    group_size: int = Field(4, gt=0, description="completions per prompt (the GRPO group)")
    mini_batch_size: int | None = Field(
        None, gt=0, description="samples per optimizer step; null = all samples of the step"
    )
    ppo_epochs: int = Field(1, gt=0, description="passes over each step's samples")
    clip_low: float | None = Field(None, ge=0, lt=1, description="ratio clip below: 1 - clip_low")
    clip_high: float | None = Field(None, ge=0, description="ratio clip above: 1 + clip_high")
    kl_coef: float | None = Field(
        None, ge=0, description="weight of the KL-to-reference loss term (ppo: of the per-token KL penalty in the "
        "reward); 0 skips the reference")
    kl_estimator: Literal["k1", "k2", "k3"] | None = Field(
        None, description="KL estimator (Schulman's k1/k2/k3); null while kl_coef is 0")
    loss_agg: LossAgg | None = Field(
        None, description="how token losses reduce to one number; settable for grpo, rloo, reinforce_pp")
    dynamic_sampling: bool | None = Field(
        None, description="drop groups whose rewards are all equal (DAPO's; any algorithm may use it)")
    overlong_buffer: int | None = Field(
        None, gt=0, description="DAPO overlong penalty (any algorithm may use it): reward falls to -1 over "
        "the last N tokens before rollout.max_new_tokens; null = off")
    async_steps: int = Field(
        0, ge=0, le=1, description="1: one-step-off async RL, the engines generate step k+1's samples with the "
        "weights before step k's update while the learners train on step k (each sample then one update "
        "stale; pair it with tis_cap); 0: generate, learn, sync in turn")
    tis_cap: float | None = Field(
        None, gt=0, description="truncated importance sampling: each token's policy-gradient term x "
        "min(pi_learner / pi_rollout, tis_cap), pi_rollout the engine's log-prob of the sampled token (Yao et "
        "al. 2025); corrects for an engine that runs older weights or computes differently; null = off")

    gamma: float = Field(1.0, ge=0, le=1, description="ppo: discount per token (1: RLHF's undiscounted episode)")
    lam: float = Field(0.95, ge=0, le=1, description="ppo: GAE lambda")
    value_clip: float | None = Field(
        0.2, gt=0, description="ppo: the critic's update clipped to old value +- value_clip (PPO2); null = off")
    whiten_advantages: bool = Field(True, description="ppo: standardise each step's advantages over its tokens")

    @model_validator(mode="after")
    def _algorithm_defaults(self) -> "AlgorithmConfig":
        for key, value in ALGORITHM_DEFAULTS[self.name].items():
            if getattr(self, key) is not None:
                continue
            self.model_fields_set.discard(key)  # an explicit null means "the default" too
            if key != "kl_estimator" or self.kl_coef:  # no KL term, no estimator: it stays null
                object.__setattr__(self, key, value)  # frozen: resolved once, here
        return self

    def default_note(self, field: str) -> str:
        if field in ALGORITHM_DEFAULTS[self.name]:
            return f"{self.name} default: {ALGORITHM_PAPERS[self.name]}"
        return super().default_note(field)

    def setting_errors(self) -> list[tuple[str, str]]:
        """(key, message) for each set value the algorithm does not use."""
        errors = []
        for key, why in ALGORITHM_FIXED.get(self.name, {}).items():
            fixed = ALGORITHM_DEFAULTS[self.name][key]
            if key in self.model_fields_set and getattr(self, key) != fixed:
                errors.append((key, f"{self.name} fixes {key} at {fixed!r} ({why}); remove the key or choose "
                                    "another algorithm"))
        if self.loss_agg == "seq-mean-token-sum-norm" and self.name != "dr_grpo":
            errors.append(("loss_agg", f"seq-mean-token-sum-norm is Dr. GRPO's loss, not {self.name}'s: "
                                       "use name: dr_grpo"))
        for key in ("gamma", "lam", "value_clip", "whiten_advantages"):
            if self.name != "ppo" and getattr(self, key) != type(self).model_fields[key].default:
                errors.append((key, f"only ppo uses {key} (its critic's advantages); {self.name} takes its "
                                    "advantages from the group: remove the key or use name: ppo"))
        if "kl_estimator" in self.model_fields_set and self.kl_coef == 0:
            why = "as set" if "kl_coef" in self.model_fields_set else f"the {self.name} default"
            errors.append(("kl_estimator", f"unused with {self.name}: kl_coef is 0 ({why}); set kl_coef > 0 "
                                           "or remove the key"))
        return errors


class CriticConfig(Section):
    """PPO's value model: its own FSDP2 actor group, a one-label score head read at every token."""
    init: str | None = Field(None, description="a reward model directory to start from (trainer: reward_model's "
                             "output); null: the policy's weights with a fresh value head")
    learning_rate: float = Field(1e-5, gt=0, description="the critic's peak learning rate (training.lr_scheduler's "
                                 "schedule)")
    warmup_steps: int = Field(0, ge=0, description="first steps that train only the critic (the policy waits for "
                              "a value function that means something)")
    num_workers: int = Field(1, gt=0, description="critic actors (FSDP2 ranks)")
    cpus_per_worker: float = Field(0.5, gt=0, description="Ray CPUs per critic actor (a GPU each with "
                                   "scaling.use_gpu)")


class ReferenceConfig(Section):
    colocate: bool = Field(False, description="hold the reference inside each learner actor, not its own actor")
    num_cpus: float = Field(0.25, gt=0, description="Ray CPUs of the reference actor")


class RolloutConfig(Section):
    engine: Literal["vllm", "hf"] = Field("vllm", description="generation engine")
    num_workers: int = Field(1, gt=0, description="rollout actors, one engine each")
    num_cpus: float = Field(0.5, gt=0, description="Ray CPUs per rollout actor")
    num_gpus: float = Field(0, ge=0, description="GPUs per rollout actor (1 for CUDA vLLM)")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="the engines' weight dtype; null: model.dtype. The learner casts its weights to it "
        "for each sync and fingerprints them as cast")
    temperature: float = Field(1.0, ge=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    max_new_tokens: int = Field(64, gt=0, description="completion length cap")
    gpu_memory_utilization: float = Field(
        0.2, gt=0, le=1, description="vLLM memory share (of RAM on CPU builds)"
    )
    kv_cache_gib: int = Field(1, gt=0, description="VLLM_CPU_KVCACHE_SPACE for CPU builds")
    threads: int | None = Field(
        None, gt=0, description="compute threads per engine on CPU (vLLM: its OpenMP threads, not pinned; HF: "
        "torch threads); null: vLLM pins one thread per engine to one core (the same core for every engine "
        "on a node), HF uses 1. Phases take turns, so generation may use every core the learners leave idle; a "
        "tiny model generates faster on one (measured: hidden 128, 1.1 s vs 1.3 s a batch), a 34M one on 2 (7.9 s vs 8.7 s)")
    max_restarts: int = Field(
        3, ge=0, description="rollout workers replaced after their engine died (each gets the learner's "
        "weights and the phase is retried); one more death stops the run")


class RewardFnConfig(Section):
    name: str = Field(..., min_length=1, description="built-in reward name or 'module:function'")
    weight: float = Field(1.0, description="weight in the summed reward")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments")


class RewardModelConfig(Section):
    """A learned reward: a one-label sequence classifier (``trainer: reward_model``'s output) scoring each
    prompt + completion, on actors of its own (``workers/reward_model.py``)."""
    path: str = Field(..., min_length=1, description="HF directory or hub name of a one-label "
                      "AutoModelForSequenceClassification (its tokenizer beside it)")
    name: str | None = Field(None, description="term name in the metrics (reward/<name>); default reward_model, "
                             "reward_model_<i> when there are several")
    weight: float = Field(1.0, description="weight in the summed reward")
    normalize: bool = Field(False, description="standardise scores by the running mean and std of every score "
                            "this run has seen (this step's included); kept in checkpoints for exact resume")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field("float32", description="parameter dtype")
    max_length: int = Field(1024, gt=0, description="prompt + completion tokens scored (the prompt's end and the "
                            "completion's start are kept)")
    batch_size: int = Field(16, gt=0, description="sequences per forward pass")
    num_workers: int = Field(1, gt=0, description="actors holding this model; a step's samples split among them")
    num_cpus: float = Field(0.25, gt=0, description="Ray CPUs per actor")
    num_gpus: float = Field(0, ge=0, description="GPUs per actor (0: CPU)")
    torch_threads: int = Field(1, gt=0, description="torch threads per actor on CPU")


class RewardConfig(Section):
    functions: list[RewardFnConfig] = Field(default_factory=list, description="weighted reward terms")
    models: list[RewardModelConfig] = Field(default_factory=list, description="reward models as weighted terms")
    num_workers: int = Field(1, gt=0, description="reward actors")
    num_cpus: float = Field(0.25, gt=0, description="Ray CPUs per reward actor")
    timeout_s: float = Field(10.0, gt=0, description="per-call timeout; late calls count as failed")
    max_failure_share: float = Field(
        0.5, ge=0, le=1, description="stop the run when more than this share of a step's samples have a failed "
        "reward term (raised, timed out, NaN/inf) for failure_patience steps in a row")
    failure_patience: int = Field(3, gt=0, description="consecutive steps over max_failure_share that stop the run")
    judge: str | None = Field(None, description="judge YAML: an LLM judge's verdict as a reward term")
    judge_weight: float = Field(1.0, description="weight of the judge term (verdict scaled to 0..1)")


class ServeConfig(Section):
    host: str = Field("127.0.0.1", description="bind address (0.0.0.0 to accept other machines)")
    port: int = Field(8000, gt=0, lt=65536, description="HTTP port")
    served_model_name: str | None = Field(None, description="name in /v1/models; default: a hub id as it is, a "
                                          "local directory by its last two path parts (never the full path)")
    api_key: str | None = Field(None, description="required Bearer key; null = api_key_env, else open")
    api_key_env: str = Field("RAYALIGN_API_KEY", description="environment variable read when api_key is null")
    engine: Literal["vllm", "hf"] = Field("vllm", description="generation engine of each replica")
    max_model_len: int | None = Field(None, gt=0, description="prompt + completion tokens; null = model's")
    gpu_memory_utilization: float = Field(
        0.2, gt=0, le=1, description="vLLM memory share (of RAM on CPU builds)"
    )
    kv_cache_gib: int = Field(1, gt=0, description="VLLM_CPU_KVCACHE_SPACE for CPU builds")
    num_replicas: int = Field(1, gt=0, description="Serve replicas (ignored with autoscaling)")
    autoscaling: bool = Field(False, description="scale between min_replicas and max_replicas")
    min_replicas: int = Field(1, ge=0, description="autoscaling floor")
    max_replicas: int = Field(1, gt=0, description="autoscaling ceiling")
    target_ongoing_requests: float = Field(8, gt=0, description="autoscaling: requests per replica to aim at")
    max_ongoing_requests: int = Field(64, gt=0, description="requests a replica generates for at once (vLLM batches "
                                      "them)")
    max_queued_requests: int = Field(64, ge=0, description="requests a replica holds waiting beyond "
                                     "max_ongoing_requests; more: 429 with Retry-After (a bounded queue)")
    num_cpus: float = Field(1.0, gt=0, description="Ray CPUs per replica")
    num_gpus: float = Field(0, ge=0, description="GPUs per replica (1 for CUDA vLLM)")
    torch_threads: int = Field(2, gt=0, description="torch threads per replica (CPU engines)")
    deploy_timeout_s: float = Field(300, gt=0, description="give up when replicas are not up by then")
    health_check_period_s: float = Field(
        10, gt=0, description="how often Serve asks each replica whether its engine lives; a dead one is replaced")
    app_name: str = Field("rayalign", min_length=1, description="Serve application name")
    route_prefix: str = Field("/", pattern=r"^/", description="URL path of the app (the API is at PREFIX/v1)")
    max_body_bytes: int = Field(8_000_000, gt=0, description="request body size; larger: 413 before parsing")
    max_header_bytes: int = Field(32_768, gt=0, description="request header bytes; more: 431 before the key is "
                                  "checked (Serve's proxy reads them first: put a reverse proxy in front when exposed)")
    body_timeout_s: float = Field(30, gt=0, description="a client that sends no body bytes for this long gets 408")
    max_prompt_chars: int = Field(200_000, gt=0, description="characters of prompt text a request may send (all "
                                  "messages or prompts); more: 400 before tokenizing")
    max_choices: int = Field(64, gt=0, description="prompts x n per request; more: 400")
    max_completion_tokens: int | None = Field(None, gt=0, description="cap on max_tokens (and the default when a "
                                              "request sets none); null: the context left after the prompt")
    image_dir: str | None = Field(None, description="vision-language models: a directory whose images requests may "
                                  "name as file:// URLs; null: data URLs only (and remote ones when allowed)")
    allow_remote_images: bool = Field(False, description="vision-language models: fetch http(s) image URLs on the "
                                      "server (off: a request could make the server fetch any address)")

    @property
    def start_replicas(self) -> int:
        """Replicas the app starts with (autoscaling starts at min_replicas, at least one)."""
        return max(self.min_replicas, 1) if self.autoscaling else self.num_replicas


class InferConfig(Section):
    engine: Literal["vllm", "hf"] = Field("vllm", description="generation engine")
    num_workers: int = Field(1, gt=0, description="batch: Ray workers, one engine each")
    num_cpus: float = Field(1.0, gt=0, description="batch: Ray CPUs per worker")
    num_gpus: float = Field(0, ge=0, description="batch: GPUs per worker (1 for CUDA vLLM)")
    gpu_memory_utilization: float = Field(0.2, gt=0, le=1, description="vLLM memory share (of RAM on CPU)")
    kv_cache_gib: int = Field(1, gt=0, description="VLLM_CPU_KVCACHE_SPACE for CPU builds")
    max_model_len: int = Field(1024, gt=0, description="prompt + completion tokens")
    temperature: float = Field(0.7, ge=0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    max_new_tokens: int = Field(256, gt=0, description="completion length cap")
    n: int = Field(1, gt=0, description="batch: completions per prompt")
    seed: int = Field(0, description="sampling seed (prompt j uses seed + j * n)")
    chunk_size: int = Field(32, gt=0, description="batch: prompts per worker call")
    system_prompt: str | None = Field(None, description="a system turn put before every conversation")


class JudgeConfig(Section):
    """A judge file (``rayalign judge -c judge.yaml``, ``reward.judge``, evaluate's judge tasks): which
    model answers (a local model served on Ray Serve, or any OpenAI-compatible URL), how it is asked
    (the template) and how its answer is read (the parser)."""
    template: str = Field("helpfulness", description="built-in judge (helpfulness | correctness | safety | "
                          "pairwise) or a prompt with {prompt} {response} [{reference}], pairwise {response_a} "
                          "{response_b}")
    parser: Literal["score", "yes_no", "pairwise", "json"] | None = Field(
        None, description="how the verdict is read; default: the built-in judge's")
    json_key: str = Field("score", description="json parser: the key holding the number")
    model: ModelConfig | None = Field(None, description="a local judge model, deployed as a Serve app")
    serve: ServeConfig = Field(default_factory=lambda: ServeConfig(app_name="rayalign-judge", route_prefix="/judge"),
                               description="serving of the local judge model (its own app and route)")
    base_url: str | None = Field(None, description="an OpenAI-compatible API instead of a local model")
    model_name: str | None = Field(None, description="model name sent to base_url")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable with base_url's key")
    temperature: float = Field(0.0, ge=0, le=2, description="judge sampling temperature")
    max_tokens: int = Field(256, gt=0, description="judge answer length cap")
    max_retries: int = Field(2, ge=0, description="extra asks when the verdict cannot be parsed")
    retry_temperature: float = Field(0.7, ge=0, le=2, description="temperature of the extra asks")
    concurrency: int = Field(16, gt=0, description="requests in flight at once")
    timeout_s: float = Field(120, gt=0, description="per-request timeout")
    cache: str | None = Field("~/.cache/rayalign/judge.sqlite",
                              description="verdict cache keyed by (judge config, inputs); null = off")


class EvalTaskConfig(Section):
    name: str = Field(..., min_length=1, description="label in the results table")
    kind: Literal["generate", "multiple_choice", "perplexity", "judge", "reward_model"] = Field(
        ..., description="verifiable generation | log-likelihood choice | text perplexity | judge score | "
        "reward-model score")
    task: str | None = Field(None, description="generate: built-in task (letter_count | arithmetic | countdown; "
                             "visual, for a vision-language model: shape_count | shape_colour)")
    path: str | None = Field(None, description="multiple_choice: JSONL; perplexity: text file; judge, "
                             "reward_model: prompts JSONL; null = the built-in set")
    num_samples: int = Field(100, gt=0, description="examples (generated tasks; first N rows of files)")
    seed: int = Field(1234, description="task generator seed (held out from training's 0..)")
    split: Literal["train", "test"] = Field(
        "test", description="generate: the task's held-out set (letter_count: words training never sees)")
    sampled: int = Field(0, ge=0, description="generate: also score N answers per prompt sampled at "
                         "temperature 1 (sampled_accuracy)")
    max_new_tokens: int = Field(64, gt=0, description="generation length cap")
    judge: str | None = Field(None, description="judge: judge YAML file")
    reward_model: str | None = Field(None, description="reward_model: the reward model (a one-label classifier "
                                     "directory or hub name)")
    baseline: ModelConfig | None = Field(None, description="judge, reward_model: a second model for the win rate")


class EvalConfig(Section):
    """An evaluation file (``rayalign evaluate -c eval.yaml``)."""
    model: ModelConfig = Field(..., description="the model under evaluation")
    tasks: list[EvalTaskConfig] = Field(..., min_length=1, description="what to measure")
    engine: Literal["vllm", "hf"] = Field("vllm", description="generation engine")
    max_model_len: int = Field(1024, gt=0, description="prompt + completion tokens")
    temperature: float = Field(0.0, ge=0, description="generation temperature (0 = greedy)")
    batch_size: int = Field(8, gt=0, description="sequences per forward (log-likelihood tasks)")
    output_dir: str = Field("outputs/eval", description="results.json goes here")


class SchedulerConfig(Section):
    name: Literal["fifo", "asha", "pbt"] = Field("fifo", description="fifo: run every trial to the end; asha: "
                                                 "stop poor trials early; pbt: copy good trials' checkpoints")
    grace_period: int = Field(2, gt=0, description="asha: reports (logged steps) a trial runs before it can stop")
    reduction_factor: float = Field(2.0, gt=1, description="asha: keep 1/reduction_factor of trials at each rung")
    perturbation_interval: int = Field(4, gt=0, description="pbt: reports between exploit/explore decisions "
                                       "(a multiple of training.save_steps / logging_steps)")
    mutations: list[str] = Field(default_factory=list, description="pbt: search_space keys it may perturb; "
                                 "empty: all of them")
    quantile_fraction: float = Field(0.5, gt=0, le=0.5, description="pbt: the bottom share copies the top share")


class TuneConfig(Section):
    metric: str = Field("eval_loss", description="a key the trainer logs to metrics.jsonl, reported every "
                        "logged step (eval_loss, loss, reward_mean, accuracy, ...)")
    mode: Literal["min", "max"] = Field("min", description="minimise or maximise the metric")
    num_samples: int = Field(4, gt=0, description="trials (with grid values: repeats of the whole grid)")
    search_space: dict[str, Any] = Field(
        default_factory=dict, description="dotted recipe key -> {grid|choice: [values]} or "
        "{uniform|loguniform|randint: [low, high]}")
    max_concurrent_trials: int | None = Field(None, gt=0, description="trials running at once; null: as many "
                                              "as the cluster's CPUs/GPUs fit")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig, description="trial scheduler")
    search_alg: Literal["random", "optuna"] = Field("random", description="random/grid sampling, or Optuna's "
                                                    "TPE (pip install 'rayalign[tune]')")
    seed: int | None = Field(0, description="seed of the search (null: unseeded)")


class CallTimeouts(Section):
    """Seconds the RL driver waits for one call on a role before it stops the run naming the role."""
    generate: float = Field(1800, gt=0, description="rollout workers: one chunk of a step's generation")
    reference: float = Field(900, gt=0, description="reference actor: one step's log-probs")
    reward: float = Field(900, gt=0, description="reward-model actors: one step's scores")
    values: float = Field(900, gt=0, description="ppo's critic: one step's values")
    train: float = Field(1800, gt=0, description="learners: one optimizer step (all its micro batches)")
    sync: float = Field(900, gt=0, description="learners to rollout workers: one weight sync")
    save: float = Field(1800, gt=0, description="learners: writing one checkpoint")


class ClusterConfig(Section):
    placement: Literal["separate", "colocate"] = Field(
        "separate", description="RL roles in one placement group: separate (each actor its own bundle, spread "
        "over nodes) or colocate (learner i and rollout worker i share a bundle: one node, one GPU split)")
    call_timeout_s: CallTimeouts = Field(default_factory=CallTimeouts, description="deadline per RL phase call: "
                                         "past it the run stops naming the role, the actor and the wait")


class RecipeConfig(Section):
    trainer: Trainer = Field("sft", description="sft | pretrain | dpo | kto | reward_model | grpo | verl_grpo "
                             "(the RL recipe run by verl's trainer) | vl_sft (vision-language SFT)")
    model: ModelConfig = Field(..., description="the policy model")
    data: DataConfig | None = Field(None, description="datasets; required by train and evaluate")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="optimisation")
    scaling: ScalingConfig = Field(default_factory=ScalingConfig, description="Ray Train workers")
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig, description="DPO family, reward models")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig, description="RL algorithm")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="RL generation")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="RL rewards")
    critic: CriticConfig = Field(default_factory=CriticConfig, description="ppo's value model")
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig, description="RL reference model")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="inference service")
    infer: InferConfig = Field(default_factory=InferConfig, description="rayalign infer")
    tune: TuneConfig = Field(default_factory=TuneConfig, description="Ray Tune sweep")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="RL roles on the Ray cluster")
    verl_overrides: dict[str, Any] = Field(
        default_factory=dict, description="trainer verl_grpo: verl config keys (dotted, e.g. "
        "actor_rollout_ref.rollout.tensor_model_parallel_size) set after the translation, so they win; a key "
        "verl lacks is an error")
    verl_runtime_env: dict[str, Any] | None = Field(
        None, description="trainer verl_grpo: the Ray runtime_env verl's trainer runs in (its pins clash with "
        "ours); null: pip installs verl[vllm] there; {}: this environment")


TRAINER_DATA_FORMAT: dict[str, tuple[str, ...]] = {
    "sft": ("sft",), "pretrain": ("text",), "dpo": ("preference",), "kto": ("kto",), "reward_model": ("preference",),
    "grpo": ("prompt", "vl_prompt"), "verl_grpo": ("prompt",), "vl_sft": ("vl_sft",),
}


def cross_field_errors(cfg: BaseModel) -> list[tuple[tuple[str | int, ...], str]]:
    """Checks that span fields, as (key path, message) pairs; empty when the config is coherent."""
    if isinstance(cfg, JudgeConfig):
        return _judge_errors(cfg)
    if isinstance(cfg, EvalConfig):
        return _eval_errors(cfg)
    assert isinstance(cfg, RecipeConfig)
    errors: list[tuple[tuple[str | int, ...], str]] = []
    want = TRAINER_DATA_FORMAT[cfg.trainer]
    for split in ("train", "eval"):
        split_cfg = getattr(cfg.data, split, None) if cfg.data else None
        if split_cfg is not None and split_cfg.format not in want:
            errors.append((("data", split, "format"), f"trainer '{cfg.trainer}' needs format "
                           f"{' or '.join(repr(w) for w in want)}, got '{split_cfg.format}'"))
    if cfg.trainer == "dpo" and cfg.preference.loss_type == "kto":
        errors.append((("preference", "loss_type"), "KTO takes unpaired rows: use trainer: kto"))
    if cfg.trainer in RL_TRAINERS:
        errors += _rl_errors(cfg)
    if cfg.trainer != "verl_grpo" and (cfg.verl_overrides or cfg.verl_runtime_env is not None):
        key = "verl_overrides" if cfg.verl_overrides else "verl_runtime_env"
        errors.append(((key,), f"only trainer verl_grpo uses it, not {cfg.trainer}"))
    if cfg.serve.autoscaling and cfg.serve.min_replicas > cfg.serve.max_replicas:
        errors.append((("serve", "min_replicas"),
                       f"min_replicas {cfg.serve.min_replicas} > max_replicas {cfg.serve.max_replicas}"))
    return errors


def _rl_errors(cfg: RecipeConfig) -> list[tuple[tuple[str | int, ...], str]]:
    errors: list[tuple[tuple[str | int, ...], str]] = []
    a = cfg.algorithm
    if not cfg.reward.functions and not cfg.reward.models and cfg.reward.judge is None:
        errors.append((("reward", "functions"),
                       "online RL needs at least one reward function, reward model or reward.judge"))
    names = [m.name for m in cfg.reward.models] + [f.name for f in cfg.reward.functions]
    for i, model in enumerate(cfg.reward.models):
        if model.name is not None and names.count(model.name) > 1:
            errors.append((("reward", "models", i, "name"), f"'{model.name}' names two reward terms"))
    if a.name == "rloo" and a.group_size < 2:
        errors.append((("algorithm", "group_size"), "rloo needs group_size >= 2 (leave-one-out baseline)"))
    errors += [(("algorithm", key), message) for key, message in a.setting_errors()]
    if cfg.data and cfg.rollout.max_new_tokens >= cfg.data.train.max_length:
        errors.append((("rollout", "max_new_tokens"), f"must be below data.train.max_length "
                       f"({cfg.data.train.max_length}), the prompt + completion budget"))
    if cfg.data and cfg.data.train.format == "vl_prompt" and a.name == "ppo":
        errors.append((("algorithm", "name"), "ppo's critic reads text only; vl_prompt data trains with the "
                       "critic-free algorithms (grpo, dr_grpo, rloo, reinforce_pp, dapo, gspo)"))
    if a.name == "ppo" and a.kl_coef and cfg.reference.colocate:
        errors.append((("reference", "colocate"), "ppo folds the KL into the reward on the driver, which needs the "
                       "reference's log-probs from the reference actor; set colocate: false"))
    if a.overlong_buffer and a.overlong_buffer > cfg.rollout.max_new_tokens:
        errors.append((("algorithm", "overlong_buffer"), "must not exceed rollout.max_new_tokens"))
    return errors


BUILTIN_JUDGES = ("helpfulness", "correctness", "safety", "pairwise")
EVAL_NEEDS: dict[str, str] = {"generate": "task", "judge": "judge", "reward_model": "reward_model"}


def _judge_errors(cfg: JudgeConfig) -> list[tuple[tuple[str | int, ...], str]]:
    errors: list[tuple[tuple[str | int, ...], str]] = []
    if (cfg.model is None) == (cfg.base_url is None):
        errors.append((("model",), "set exactly one of model (a local judge) and base_url (an API)"))
    if cfg.base_url is not None and not cfg.model_name:
        errors.append((("model_name",), "required with base_url: the model name the API serves"))
    if cfg.template not in BUILTIN_JUDGES:
        if cfg.parser is None:
            errors.append((("parser",), "a custom template needs a parser (score | yes_no | pairwise | json)"))
        slots = ("{response_a}", "{response_b}") if cfg.parser == "pairwise" else ("{response}",)
        missing = [slot for slot in ("{prompt}", *slots) if slot not in cfg.template]
        if missing:
            errors.append((("template",), f"not a built-in judge ({', '.join(BUILTIN_JUDGES)}) and the "
                           f"prompt lacks {', '.join(missing)}"))
    return errors


def _eval_errors(cfg: EvalConfig) -> list[tuple[tuple[str | int, ...], str]]:
    errors: list[tuple[tuple[str | int, ...], str]] = []
    for i, task in enumerate(cfg.tasks):
        need = EVAL_NEEDS.get(task.kind)
        if need and getattr(task, need) is None:
            errors.append((("tasks", i, need), f"required for kind '{task.kind}'"))
        if task.kind == "perplexity" and task.path is None:
            errors.append((("tasks", i, "path"), "required for kind 'perplexity' (a text file)"))
        if task.kind in ("judge", "reward_model") and task.path is None and task.task is None:
            errors.append((("tasks", i, "path"), f"kind '{task.kind}' needs prompts: a JSONL path or a built-in task"))
    names = [t.name for t in cfg.tasks]
    for i, name in enumerate(names):
        if name in names[:i]:
            errors.append((("tasks", i, "name"), f"'{name}' is used twice"))
    return errors
