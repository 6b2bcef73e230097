"""Value rules over a parsed recipe: ranges, and keys that only make sense together. Pure and cheap: they
read the config and nothing else (grpo/validate.py adds the checks that look at files and packages)."""

from __future__ import annotations

import math
import re

from grpo.config import EvalConfig, HackingAlarms, RecipeConfig
from grpo import resolve
from grpo.dtypes import DTYPES


def recipe_rules(cfg: RecipeConfig) -> list[str]:
    """Rules that involve values, or several keys together, for `grpo train`. Cheap: nothing is loaded."""
    p: list[str] = []
    t, s = cfg.train, cfg.sampler

    def positive(where: str, value: float | int | None) -> None:
        if value is not None and value <= 0:
            p.append(f"{where}: must be > 0, got {value}")

    for where, value in [
        ("train.steps", t.steps), ("train.prompts_per_step", t.prompts_per_step), ("train.mu", t.mu),
        ("train.micro_batch_size", t.micro_batch_size), ("train.lr", t.lr), ("train.max_grad_norm", t.max_grad_norm),
        ("train.max_sampling_rounds", t.max_sampling_rounds), ("train.loss_constant", t.loss_constant),
        ("sampler.max_new_tokens", s.max_new_tokens), ("sampler.generation_batch_size", s.generation_batch_size),
        ("sampler.top_p", s.top_p), ("data.max_prompt_tokens", cfg.data.max_prompt_tokens),
        ("sampler.max_logprob_gap", s.max_logprob_gap), ("train.vocab_chunk_tokens", t.vocab_chunk_tokens),
        ("sampler.vllm.max_num_seqs", s.vllm.max_num_seqs),
        ("sampler.vllm.max_num_batched_tokens", s.vllm.max_num_batched_tokens),
    ]:
        positive(where, value)
    if s.top_p > 1:
        p.append(f"sampler.top_p: must be in (0, 1], got {s.top_p}")
    if s.temperature <= 0:
        p.append(f"sampler.temperature: must be > 0 for RL sampling (got {s.temperature}); use e.g. 1.0")
    if s.group_size < 2:
        p.append(f"sampler.group_size: group-relative advantages need at least 2 completions per prompt, got "
                 f"{s.group_size}; use e.g. 8")
    batch = t.prompts_per_step * s.group_size
    if cfg.logging.profile_step < 0:
        p.append(f"logging.profile_step: a step number, or 0 for none; got {cfg.logging.profile_step}")
    if t.max_tokens_per_micro_batch < 0:
        p.append(f"train.max_tokens_per_micro_batch: must be >= 0 (0: cut by train.micro_batch_size), got "
                 f"{t.max_tokens_per_micro_batch}")
    # larger than the batch: one micro-batch holding it all
    if t.max_tokens_per_micro_batch == 0 and 0 < t.micro_batch_size < batch and batch % t.micro_batch_size:
        p.append(f"train.micro_batch_size: {t.micro_batch_size} does not divide the batch of prompts_per_step x "
                 f"group_size = {t.prompts_per_step} x {s.group_size} = {batch}; pick a divisor of {batch}")
    if not 0 <= t.clip_low < 1:
        p.append(f"train.clip_low: must be in [0, 1), got {t.clip_low}")
    if t.clip_high < 0:
        p.append(f"train.clip_high: must be >= 0, got {t.clip_high}")
    if t.beta < 0:
        p.append(f"train.beta: the KL coefficient must be >= 0, got {t.beta}")
    p += objective_rules(cfg)
    if t.warmup_steps < 0:
        p.append(f"train.warmup_steps: must be >= 0, got {t.warmup_steps}")
    if len(t.adam_betas) != 2 or not all(0 <= b < 1 for b in t.adam_betas):
        p.append(f"train.adam_betas: expected two numbers in [0, 1), got {t.adam_betas}")
    if t.loss_constant is not None and t.loss_aggregation != "constant":
        p.append("train.loss_constant: only used with train.loss_aggregation=constant; remove it or set that mode")
    if not cfg.data.path:
        p.append("data.path: required: a local .jsonl/.json/.parquet/.csv file or a datasets hub name")
    if cfg.data.system_prompt and not cfg.data.use_chat_template:
        p.append("data.system_prompt: only used with data.use_chat_template=true; set it or drop the system prompt")
    if not cfg.rewards:
        p.append("rewards: at least one reward is required, e.g. rewards: [{name: math}]")
    for i, r in enumerate(cfg.rewards):
        if not r.name:
            p.append(f"rewards[{i}].name: required, e.g. math, format, or my_module:my_function")
    if cfg.checkpoint.keep_last < 1:
        p.append(f"checkpoint.keep_last: must be >= 1, got {cfg.checkpoint.keep_last}")
    if cfg.checkpoint.every < 0:
        p.append(f"checkpoint.every: must be >= 0, got {cfg.checkpoint.every}")
    if cfg.model.lora.enabled and cfg.model.lora.r <= 0:
        p.append(f"model.lora.r: must be > 0, got {cfg.model.lora.r}")
    if cfg.eval.every < 0:
        p.append(f"eval.every: must be >= 0, got {cfg.eval.every}")
    if cfg.eval.every > 0 and not cfg.eval.data:
        p.append("eval.every: periodic eval needs eval.data (a local file or hub name)")
    if cfg.eval.data:
        p += eval_rules(cfg.eval)
    p += precision_rules(cfg)
    p += environment_rules(cfg)
    p += staleness_rules(cfg)
    if cfg.distributed.timeout_s <= 0:
        p.append(f"distributed.timeout_s: must be > 0, got {cfg.distributed.timeout_s}")
    beat = cfg.distributed.heartbeat_s
    if beat is not None and not 0 <= beat < cfg.distributed.timeout_s:
        p.append(f"distributed.heartbeat_s: must be 0 (off) or below distributed.timeout_s "
                 f"({cfg.distributed.timeout_s}), got {beat}; leave it unset for timeout_s / 5")
    return p


def staleness_rules(cfg: RecipeConfig) -> list[str]:
    """train.max_staleness and the samplers in processes of their own (sampler.backend=hf_worker, sampler.worker;
    sampler.backend=vllm_server, sampler.server)."""
    p: list[str] = []
    t, s, w = cfg.train, cfg.sampler, cfg.sampler.worker
    p += server_rules(cfg)
    if w.timeout_s <= 0:
        p.append(f"sampler.worker.timeout_s: must be > 0 (seconds the worker may stay silent while the trainer waits on it), got "
                 f"{w.timeout_s}")
    if w.threads < 0:
        p.append(f"sampler.worker.threads: must be >= 0 (0: torch's default), got {w.threads}")
    if any(not isinstance(c, int) or c < 0 for c in w.cores):
        p.append(f"sampler.worker.cores: CPU core numbers (>= 0), got {w.cores}")
    if s.backend == "hf_worker" and not cfg.model.lora.enabled and cfg.model.dtype != cfg.model.master_dtype:
        p.append(f"sampler.backend: hf_worker decodes a copy of the policy as stored, but model.dtype = "
                 f"{cfg.model.dtype} differs from model.master_dtype = {cfg.model.master_dtype} (a cast the "
                 f"worker does not make); set them equal, enable LoRA, or use sampler.backend=hf")
    k = t.max_staleness
    if k < 0:
        p.append(f"train.max_staleness: must be >= 0 (0: sample, then train), got {k}")
    if k <= 0:
        return p
    if s.backend not in ("hf_worker", "vllm_server"):
        p.append(f"train.max_staleness: generating ahead needs a sampler in a process of its own; set "
                 f"sampler.backend=vllm_server (a `grpo serve` server) or hf_worker (sampler.backend={s.backend} "
                 f"runs in the trainer's process), or train.max_staleness=0")
    if t.dynamic_sampling:
        p.append("train.dynamic_sampling: refilling a step with more prompts needs that step's rewards before the "
                 "next request goes out, which generating ahead (train.max_staleness > 0) does not wait for; use one "
                 "or the other")
    if cfg.environment.name:
        p.append(f"environment.name: tool-using episodes ({cfg.environment.name}) are not generated ahead yet; set "
                 f"train.max_staleness=0")
    if t.old_logprobs == "trainer":
        p.append("train.old_logprobs: trainer is the policy before this step's update, not the one that sampled a "
                 "stale episode; with train.max_staleness > 0 the ratio must be against the sampling policy: set "
                 "train.old_logprobs=sampler")
    if t.sampler_correction in ("tis", "mis"):
        p.append(f"train.sampler_correction: {t.sampler_correction} with train.max_staleness > 0 would count the "
                 f"gap twice (the ratio pi / pi_sampling already holds it); set train.sampler_correction=auto")
    return p


def server_rules(cfg: RecipeConfig) -> list[str]:
    """sampler.server: checked whatever the backend (a typo waits for the day someone switches to it otherwise)."""
    v = cfg.sampler.server
    p: list[str] = []
    if cfg.sampler.backend == "vllm_server" and not v.url:
        p.append("sampler.server.url: sampler.backend=vllm_server needs the server's address, e.g. "
                 "http://127.0.0.1:8000 (start the server with `grpo serve RECIPE.yaml --port 8000`)")
    if v.url and not re.fullmatch(r"https?://[^/\s]+(:\d+)?/?", v.url):
        p.append(f"sampler.server.url: expected http://HOST:PORT (no path: the routes are vLLM's), got {v.url!r}")
    if not v.model:
        p.append("sampler.server.model: the served model name must not be empty (grpo serve serves 'grpo-policy')")
    if v.timeout_s <= 0:
        p.append(f"sampler.server.timeout_s: must be > 0 (seconds every call to the server may take), got "
                 f"{v.timeout_s}")
    if v.concurrency < 1:
        p.append(f"sampler.server.concurrency: must be >= 1 (requests in flight at once), got {v.concurrency}")
    if v.data_parallel_size < 1:
        p.append(f"sampler.server.data_parallel_size: must be >= 1 (engine replicas), got {v.data_parallel_size}")
    if not 0 <= v.nccl_port <= 65535:
        p.append(f"sampler.server.nccl_port: a TCP port (0: any free one), got {v.nccl_port}")
    return p


def environment_rules(cfg: RecipeConfig) -> list[str]:
    """The episode limits of a tool-using recipe (nothing to check without environment.name)."""
    e = cfg.environment
    if not e.name:
        return []
    p = [f"environment.{key}: must be >= 1, got {value}" for key, value in [
        ("max_turns", e.max_turns), ("max_tool_calls", e.max_tool_calls), ("workers", e.workers),
        ("max_observation_tokens", e.max_observation_tokens), ("max_total_tokens", e.max_total_tokens)] if value < 1]
    if e.max_tool_seconds <= 0:
        p.append(f"environment.max_tool_seconds: must be > 0, got {e.max_tool_seconds}")
    if e.max_turns < 2:
        p.append(f"environment.max_turns: {e.max_turns} turn leaves no turn to read a tool's output; use at least 2")
    if any(not isinstance(s, str) or not s for s in e.stop):
        p.append(f"environment.stop: every stop string must be non-empty text, got {e.stop}")
    return p


def precision_rules(cfg: RecipeConfig) -> list[str]:
    """model.dtype (compute) against model.master_dtype (stored weights and optimizer state)."""
    p: list[str] = []
    m = cfg.model
    if DTYPES[m.master_dtype] < DTYPES[m.dtype]:
        p.append(f"model.master_dtype: {m.master_dtype} masters under {m.dtype} compute would store less than they "
                 f"compute; use master_dtype=float32 (or set model.dtype={m.master_dtype} too)")
    if m.lora.enabled and m.master_dtype != "float32" and m.dtype != m.master_dtype:
        p.append(f"model.master_dtype: LoRA adapters in {m.master_dtype} under {m.dtype} compute; use float32 masters")
    return p


# Half a unit in the last place of a typical weight (|w| ~ 0.02), relative: bfloat16 keeps 8 significant bits, float16
# 11, so half an ulp is 2^-9 / 2^-12 of the value at the low end of its binade. An AdamW step moves each weight by
# about lr (the update is normalised), so below this the step rounds away in a weight stored in that dtype.
TYPICAL_WEIGHT = 0.02
HALF_ULP = {"bfloat16": 2.0 ** -9, "float16": 2.0 ** -12}


def precision_warnings(cfg: RecipeConfig) -> list[str]:
    """Pure low precision: master weights in 16 bits with a learning rate below what they can represent."""
    master = cfg.model.master_dtype
    if master not in HALF_ULP:
        return []
    smallest = TYPICAL_WEIGHT * HALF_ULP[master]
    if cfg.train.lr >= smallest:
        return []
    return [f"model.master_dtype={master} with train.lr={cfg.train.lr:g}: an AdamW step moves a weight by about lr, "
            f"below half a {master} ulp of a typical weight ({TYPICAL_WEIGHT} x 2^{math.log2(HALF_ULP[master]):.0f} "
            f"= {smallest:.1e}), so most updates round away and the model barely learns; set "
            f"model.master_dtype=float32 (the default: float32 master weights and optimizer state, compute stays in "
            f"model.dtype={cfg.model.dtype})"]


def objective_rules(cfg: RecipeConfig) -> list[str]:
    """The objective's keys (train.loss, clip_ratio_c, the KL options, the sampler correction)."""
    p: list[str] = []
    t = cfg.train
    if t.loss in ("gspo", "gspo_token") and max(t.clip_low, t.clip_high) > 0.01:
        p.append(f"train.loss: {t.loss} clips a sequence-level ratio (the exp of a mean token log-ratio), which "
                 f"stays within ~1e-3 of 1, so clip ranges of {t.clip_low} / {t.clip_high} never engage; use the "
                 f"GSPO paper's train.clip_low=3.0e-4 train.clip_high=4.0e-4 (at most 0.01)")
    if t.loss == "cispo" and t.clip_high <= 0:
        p.append(f"train.clip_high: cispo needs an upper bound on its IS weight, min(ratio, 1 + clip_high); got "
                 f"{t.clip_high}; use e.g. 4.0 (TRL's epsilon_high=5.0 is the bound itself, i.e. our 4.0)")
    if t.clip_ratio_c is not None:
        if t.loss == "cispo":
            p.append("train.clip_ratio_c: dual clip bounds a clipped-ratio objective; cispo has none (its weight is "
                     "already capped by clip_high); remove clip_ratio_c")
        elif t.clip_ratio_c <= 1:
            p.append(f"train.clip_ratio_c: the dual-clip bound must be > 1 (e.g. 3), got {t.clip_ratio_c}")
    if t.kl_in == "reward" and t.beta <= 0:
        p.append("train.kl_in: reward puts the KL penalty -beta * kl into the return; it needs train.beta > 0 "
                 "(e.g. 0.01) and a reference model")
    if t.kl_clamp is not None and t.kl_clamp <= 0:
        p.append(f"train.kl_clamp: must be > 0 (the log-ratio is clamped to [-kl_clamp, kl_clamp]), got "
                 f"{t.kl_clamp}; e.g. 10, or unset")
    if t.entropy_coef < 0:
        p.append(f"train.entropy_coef: the entropy bonus must be >= 0, got {t.entropy_coef}")
    if t.sampler_correction in ("tis", "mis") and t.correction_cap <= 1:
        p.append(f"train.correction_cap: the cap C of {t.sampler_correction} must be > 1 (tis keeps min(w, C), mis "
                 f"keeps w in [1/C, C]), got {t.correction_cap}; e.g. 3")
    if t.sampler_correction in ("tis", "mis") and t.mu > 1 and t.old_logprobs == "sampler":
        p.append(f"train.sampler_correction: {t.sampler_correction} with mu = {t.mu} and old_logprobs=sampler would "
                 f"count the sampler/trainer gap twice (the ratio pi / pi_sampler already holds it); set "
                 f"train.old_logprobs=trainer")
    return p


def alarm_rules(a: HackingAlarms) -> list[str]:
    """guard.alarms: counts that are counts, shares that are shares (grpo/hacking/rules.py reads them)."""
    p = []
    if a.window < 2 or a.steps < 1:
        p.append(f"guard.alarms.window / steps: need window >= 2 and steps >= 1 (got {a.window}, {a.steps})")
    for key in ("length_correlation", "shaping_share", "answer_share", "wrong_consensus", "repeated_ngrams"):
        if not 0 <= getattr(a, key) <= 1:
            p.append(f"guard.alarms.{key}: a share or a correlation in [0, 1], got {getattr(a, key)}")
    if not -1 <= a.learned_agreement <= 1:
        p.append(f"guard.alarms.learned_agreement: a correlation in [-1, 1], got {a.learned_agreement}")
    for key in ("reward_rise", "flat_accuracy", "length_growth", "collapse_rise", "trend_z"):
        if getattr(a, key) <= 0:
            p.append(f"guard.alarms.{key}: must be > 0, got {getattr(a, key)} (guard.on_hacking=off turns the "
                     f"alarms off)")
    return p


def guard_rules(cfg: RecipeConfig) -> list[str]:
    """Value rules of the settings that stop a failing run (the reward limits, data.on_bad_row's companions)."""
    p = []
    for i, r in enumerate(cfg.rewards):
        if r.timeout_s < 0:
            p.append(f"rewards[{i}].timeout_s: must be >= 0 (0: no limit), got {r.timeout_s}")
        if r.max_abs <= 0:
            p.append(f"rewards[{i}].max_abs: must be > 0, got {r.max_abs}")
        if not 0 <= r.max_error_fraction <= 1:
            p.append(f"rewards[{i}].max_error_fraction: must be in [0, 1] (1: never stop), got {r.max_error_fraction}")
        if r.max_error_steps < 1:
            p.append(f"rewards[{i}].max_error_steps: must be >= 1, got {r.max_error_steps}")
    if cfg.guard.max_nonfinite_updates < 1:
        p.append(f"guard.max_nonfinite_updates: must be >= 1, got {cfg.guard.max_nonfinite_updates}")
    g = cfg.guard
    if g.divergence_z < 0 or g.divergence_z and (g.divergence_steps < 1 or g.divergence_warmup < 3):
        p.append(f"guard.divergence_z: {g.divergence_z} needs divergence_steps >= 1 and divergence_warmup >= 3 "
                 f"(got {g.divergence_steps}, {g.divergence_warmup}); 0 turns the guard off")
    p += alarm_rules(cfg.guard.alarms)
    if cfg.train.lr >= 1:
        p.append(f"train.lr: {cfg.train.lr:g} moves every weight by about that much per AdamW step and destroys the "
                 f"model in one update; fine-tuning rates are 1e-7 to 1e-3 (RL on LLMs: about 1e-6)")
    return p


def world_rules(cfg: RecipeConfig, world_size: int) -> list[str]:
    """What a launch on `world_size` ranks (torchrun) needs of the recipe."""
    if world_size <= 1:
        return []
    p: list[str] = []
    t, d = cfg.train, cfg.distributed
    launch = f"torchrun --nproc-per-node {world_size}"
    if t.prompts_per_step % world_size:
        p.append(f"train.prompts_per_step: {t.prompts_per_step} prompts cannot be split evenly over {world_size} "
                 f"ranks ({launch}): each rank takes whole groups; use a multiple of {world_size}")
    else:
        per_rank = t.prompts_per_step // world_size * cfg.sampler.group_size
        by_count = t.max_tokens_per_micro_batch == 0
        if by_count and 0 < t.micro_batch_size < per_rank and per_rank % t.micro_batch_size:  # larger: one
            p.append(f"train.micro_batch_size: {t.micro_batch_size} does not divide a rank's batch of "
                     f"{per_rank} completions (prompts_per_step / {world_size} ranks x group_size); pick a divisor "
                     f"of {per_rank}")
    strategy = resolve.strategy(d, world_size, cfg.model)
    if cfg.model.lora.enabled and strategy == "fsdp":
        p.append("model.lora.enabled: LoRA adapters are not sharded with FSDP here; set distributed.strategy=ddp "
                 "(the adapters are small, and the base weights stay frozen on every rank)")
    if strategy == "ddp" and d.reduce_dtype:
        p.append("distributed.reduce_dtype: an FSDP option (the gradient reduce-scatter's dtype); DDP reduces in the "
                 "master dtype. Remove it or use distributed.strategy=fsdp")
    if cfg.sampler.backend == "hf_worker":
        p.append(f"sampler.backend: hf_worker runs one trainer process beside one generation worker; under {launch} "
                 f"use sampler.backend=vllm_server (a `grpo serve` server), hf or vllm")
    elif t.max_staleness and cfg.sampler.backend != "vllm_server":
        p.append(f"train.max_staleness: {t.max_staleness} under {launch} needs sampler.backend=vllm_server")
    if cfg.sampler.backend == "vllm_server":
        if d.timeout_s <= cfg.sampler.server.timeout_s:
            p.append(f"distributed.timeout_s: {d.timeout_s} s, but the other ranks wait in a collective while rank 0 "
                     f"waits up to sampler.server.timeout_s = {cfg.sampler.server.timeout_s:g} s on the server; raise "
                     f"distributed.timeout_s above it (or lower sampler.server.timeout_s)")
        # rank 0 relays every rank's requests, one collective per call: the ranks must call in lockstep
        for key, on, why in [("train.dynamic_sampling", t.dynamic_sampling, "refill rounds differ by rank"),
                             ("environment.name", bool(cfg.environment.name), "tool turns differ by rank"),
                             ("eval.every", bool(cfg.eval.every), "the ranks' eval batches differ")]:
            if on:
                p.append(f"{key}: with sampler.backend=vllm_server under {launch} the ranks' requests go through "
                         f"rank 0 together, and {why}; not supported yet: train on one process or turn it off")
    if cfg.sampler.backend == "vllm" and cfg.sampler.vllm.tensor_parallel_size > 1:
        p.append(f"sampler.vllm.tensor_parallel_size: under {launch} each rank drives a whole engine of its own "
                 f"for its own prompts; tensor parallelism inside a data-parallel run is not supported yet. Set "
                 f"it to 1 (one engine per rank)")
    return p


def eval_rules(cfg: EvalConfig) -> list[str]:
    """Value rules for the eval section (`grpo eval`, and `grpo train` when it evaluates)."""
    p = []
    if not cfg.data.strip():
        p.append("eval.data: required: a local .jsonl/.json/.parquet/.csv file or a datasets hub name")
    if cfg.k < 1:
        p.append(f"eval.k: samples per problem must be >= 1, got {cfg.k}")
    if cfg.temperature < 0:
        p.append(f"eval.temperature: must be >= 0 (0 is greedy), got {cfg.temperature}")
    if cfg.temperature == 0 and cfg.k > 1:
        p.append(f"eval.k: {cfg.k} samples at temperature 0 are {cfg.k} copies of one greedy answer, so pass@k "
                 f"would only repeat pass@1; use k=1 for greedy, or a temperature > 0 to sample")
    if not 0 < cfg.top_p <= 1:
        p.append(f"eval.top_p: must be in (0, 1], got {cfg.top_p}")
    if cfg.max_new_tokens < 1:
        p.append(f"eval.max_new_tokens: must be >= 1, got {cfg.max_new_tokens}")
    if cfg.limit is not None and cfg.limit < 1:
        p.append(f"eval.limit: must be >= 1 (or unset for every problem), got {cfg.limit}")
    if cfg.bootstrap < 0:
        p.append(f"eval.bootstrap: must be >= 0 (0 turns confidence intervals off), got {cfg.bootstrap}")
    if cfg.generation_batch_size < 1:
        p.append(f"eval.generation_batch_size: must be >= 1, got {cfg.generation_batch_size}")
    if cfg.system_prompt and not cfg.use_chat_template:
        p.append("eval.system_prompt: only used with eval.use_chat_template=true; set it or drop the system prompt")
    if cfg.answer_pattern is not None:
        try:
            if re.compile(cfg.answer_pattern).groups < 1:
                p.append(f"eval.answer_pattern: {cfg.answer_pattern!r} has no group; wrap the answer in ( )")
        except re.error as exc:
            p.append(f"eval.answer_pattern: {cfg.answer_pattern!r} is not a valid regex ({exc})")
    return p
