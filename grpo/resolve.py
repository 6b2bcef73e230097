"""Settings whose value depends on others (`auto`, or unset meaning "derived"): each is resolved here, by one
function, once at setup; the loop, the rules, the planner and the CLIs read the result. Pure and torch-free, so
`grpo validate` and `grpo plan` resolve them exactly as training will."""

from __future__ import annotations

from grpo.config import DataConfig, DistributedConfig, EnvironmentConfig, ModelConfig, SamplerConfig, TrainConfig


def strategy(distributed: DistributedConfig, world_size: int, model: ModelConfig | None = None) -> str:
    """none | ddp | fsdp. Under torchrun: auto means fsdp (it fits any model; ddp is faster for models that fit
    whole). One process: fsdp when full fine-tuning computes in another dtype than it stores (FSDP's mixed
    precision is the one cast path), else none: there is nothing to shard or cast."""
    if world_size > 1:
        return "fsdp" if distributed.strategy == "auto" else distributed.strategy
    if model is not None and not model.lora.enabled and model.dtype != model.master_dtype \
            and distributed.strategy != "ddp":
        return "fsdp"
    return "none"


def sampler_correction(train: TrainConfig, backend: str) -> str:
    """train.sampler_correction. `auto` -> tis with the vLLM sampler, none with transformers' (whose log-probs match
    the trainer's to ~1e-7). With mu > 1 and old_logprobs=sampler the ratio pi / pi_sampler already carries the
    mismatch, so auto gives none there (an explicit tis/mis is refused by grpo.rules)."""
    if train.sampler_correction != "auto":
        return train.sampler_correction
    if backend != "vllm" or (train.mu > 1 and train.old_logprobs == "sampler"):
        return "none"
    return "tis"


def completion_tokens(sampler: SamplerConfig, environment: EnvironmentConfig | None = None) -> int:
    """The most tokens an episode holds after its prompt: sampler.max_new_tokens for one turn; with an environment,
    environment.max_total_tokens (the model's turns and the observations between them)."""
    if environment is not None and environment.name:
        return environment.max_total_tokens
    return sampler.max_new_tokens


def loss_constant(train: TrainConfig, sampler: SamplerConfig, environment: EnvironmentConfig | None = None) -> int:
    """The normaliser of loss_aggregation=constant (Dr. GRPO): train.loss_constant, else the generation budget."""
    return train.loss_constant or completion_tokens(sampler, environment)


def max_model_len(data: DataConfig, sampler: SamplerConfig, environment: EnvironmentConfig | None = None) -> int:
    """The longest sequence the sampler must hold: sampler.vllm.max_model_len, else prompt budget + episode."""
    return sampler.vllm.max_model_len or data.max_prompt_tokens + completion_tokens(sampler, environment)


def eval_sampler(requested: str, training_backend: str | None = None) -> str:
    """Which sampler an evaluation uses: "training" (periodic eval reuses the trainer's, its weights synced that
    step), "vllm" or "hf". During training a second vLLM engine would not fit beside the first, so any other request
    is served by the policy itself through transformers; standalone, "same" has no training backend to mean."""
    if training_backend is not None:
        return "training" if requested in ("same", training_backend) else "hf"
    return "vllm" if requested == "vllm" else "hf"
