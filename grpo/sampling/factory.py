"""The one place a sampler is built, for `grpo train` and `grpo eval` alike."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from grpo.config import EnvironmentConfig, ServerConfig, VllmConfig, WorkerConfig
from grpo.errors import UserError
from grpo.parallel import World
from grpo.sampling.base import Sampler


def build_sampler(backend: str, *, model: Any, tokenizer: Any, model_path: Path | str | None,
                  generation_batch_size: int, engine: VllmConfig, seed: int, dtype: str,
                  max_model_len: int | None = None, synced: bool = False, decode_context: Any = None,
                  rows_per_step: int | None = None, world: World = World.single(),
                  environment: EnvironmentConfig | None = None, worker: WorkerConfig | None = None,
                  server: ServerConfig | None = None, first_version: int = 0, weight_slots: int = 1) -> Sampler:
    """backend "hf": the policy generates itself (weights are shared, sync is free). backend "vllm": an engine
    loads `model_path` in this process with the options in `engine`; `max_model_len` as the caller resolved it
    (training: grpo.resolve.max_model_len; eval: engine.max_model_len, None meaning the model's own); `dtype` is the compute dtype (model.dtype), which vLLM must get. synced: the hf
    model is sharded over ranks (see HFSampler). decode_context: what the hf sampler's generate runs in (the
    trainer's precision and FSDP gather; None: nothing). rows_per_step: completions one rank generates per
    training step (prompts per rank x group size); on GPU it sizes vLLM's max_num_seqs unless
    engine.max_num_seqs is set (None, e.g. for eval: vLLM's default). world: this process's place in the launch.
    environment: with a name, the sampler runs tool-using episodes (grpo/sampling/tools.py) over the backend's.
    backend "hf_worker": the hf sampler on a copy of `model` in a process of its own (`worker`: its settings;
    first_version: the policy version its first weight push carries, the resumed step; weight_slots: its staging
    copies of the weights, one per step generated ahead). backend "vllm_server": a vLLM server started by
    `grpo serve` (`server`: where it is and how weights reach it; first_version and weight_slots as for hf_worker)."""
    sampler = _backend_sampler(backend, model=model, tokenizer=tokenizer, model_path=model_path,
                               generation_batch_size=generation_batch_size, engine=engine, seed=seed, dtype=dtype,
                               max_model_len=max_model_len, synced=synced, decode_context=decode_context,
                               rows_per_step=rows_per_step, world=world, worker=worker or WorkerConfig(),
                               server=server or ServerConfig(), first_version=first_version,
                               weight_slots=weight_slots)
    return with_environment(sampler, tokenizer, environment, world if synced and backend == "hf" else None)


def with_environment(sampler: Sampler, tokenizer: Any, environment: EnvironmentConfig | None,
                     lockstep: World | None = None) -> Sampler:
    """The sampler itself for one-turn episodes; wrapped to run tool-using episodes when an environment is named.
    lockstep: the ranks of a sharded policy that decodes in lockstep, which must take their turns together."""
    if environment is None or not environment.name:
        return sampler
    from environments.registry import load_environment
    from grpo.sampling.tools import ToolSampler

    env = load_environment(environment.name, environment.args, environment.stop)
    any_rank = (lambda going: lockstep.max(1.0 if going else 0.0) > 0) if lockstep is not None else None
    return ToolSampler(sampler, tokenizer, env, environment, any_rank=any_rank)


def _backend_sampler(backend: str, *, model: Any, tokenizer: Any, model_path: Path | str | None,
                     generation_batch_size: int, engine: VllmConfig, seed: int, dtype: str,
                     max_model_len: int | None, synced: bool, decode_context: Any, rows_per_step: int | None,
                     world: World, worker: WorkerConfig, server: ServerConfig, first_version: int,
                     weight_slots: int) -> Sampler:
    if backend == "hf":
        from grpo.sampling.hf import HFSampler

        return HFSampler(model, tokenizer, generation_batch_size, synced=synced, decode_context=decode_context)
    if backend == "hf_worker":
        from grpo.sampling.worker import WorkerSampler

        return WorkerSampler(model, tokenizer, generation_batch_size, timeout_s=worker.timeout_s,
                             threads=worker.threads, cores=worker.cores, first_version=first_version,
                             slots=weight_slots)
    if backend == "vllm_server":
        from grpo.dtypes import torch_dtype
        from grpo.sampling.base import stop_token_ids
        from grpo.sampling.server import ServerSampler

        eos = stop_token_ids(model_path, tokenizer, getattr(getattr(model, "generation_config", None),
                                                            "eos_token_id", None))
        return ServerSampler(model, server, eos_ids=eos, dtype=torch_dtype(dtype), first_version=first_version,
                             slots=weight_slots, world=world)
    if model_path is None:
        raise UserError("sampler vllm needs a model directory (vLLM loads the weights itself); give the model's "
                        "path or use the hf sampler (--sampler hf).")
    try:
        from grpo.sampling.vllm import VLLMSampler  # the only place vllm gets imported, and only when asked for
    except ImportError as exc:
        raise UserError(f"sampler vllm: the vLLM sampler cannot be imported ({exc}). Install it with "
                        f"`pip install 'grpo[vllm]'`, or use the hf sampler (sampler.backend=hf in a recipe, "
                        f"--sampler hf for grpo eval).") from exc
    options = dataclasses.asdict(engine)
    options["max_model_len"] = max_model_len
    return VLLMSampler(str(model_path), tokenizer=tokenizer, seed=seed, dtype=dtype, rows_per_step=rows_per_step,
                       world_size=world.size, rank=world.rank,
                       **options)
