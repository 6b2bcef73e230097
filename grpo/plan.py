"""`grpo plan`: will a recipe fit, before a GPU is rented. Per GPU, for the generation phase and the update phase, every
item of memory the run holds, computed from the model's config.json alone (no weights, no network) and the recipe,
the way the trainer lays memory out (issue 21's design):

- Precision. model.dtype is the compute dtype, model.master_dtype (float32) the stored weights' and AdamW's.
  Full fine-tuning runs FSDP2 (each decoder layer, then the root: embeddings, final norm, head) whenever the two
  differ, at every world size: masters, AdamW's two moments and the gradients are master-dtype shards (1/N each,
  gradients freed after every step), and compute-dtype copies are gathered while a forward or backward runs: the
  root's for the whole pass, two layers at a time (the one running and the one prefetched). distributed.strategy
  =ddp keeps whole copies (and DDP's gradient buckets, a second gradient copy). LoRA: the frozen base in the
  compute dtype, whole on every GPU; the adapters, their gradients and AdamW state in the master dtype.
- The reference (train.beta > 0, not LoRA): a frozen compute-dtype copy, sharded like the policy.
- The vocabulary pass: log-probs and entropy train.vocab_chunk_tokens completion positions at a time
  (grpo.objectives.loss.chunked_logprobs_and_entropy), so its peak is a few [chunk, V] tensors.
- Activations of the decoder at the micro-batch's token budget, with or without gradient checkpointing.
- vLLM (sampler.backend=vllm): one engine per GPU holding the compute-dtype weights whole, its own activations and
  the KV cache, within gpu_memory_utilization x the GPU (kv_cache_memory_bytes sets the KV part instead). With
  sleep mode it hands its memory back for the update phase; without, it holds it throughout.
- An allowance for the CUDA context and the caching allocator's fragmentation.
- Host memory at a checkpoint: rank 0 alone gathers the full master weights and AdamW state.

The verdict: it fits when the larger phase is at most 90% of the GPU (and, with vLLM, its KV cache holds at least
one full-length sequence). Otherwise the plan names the biggest items and plans each fix (LoRA, more GPUs, a smaller
token budget, a lower gpu_memory_utilization, ...) to say which of them fit.

Every figure is an estimate from shapes: the constants below say where each comes from, and bench/gpu_check.py
measures them on a GPU (README, "Will it fit? grpo plan").
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grpo.config import RecipeConfig
from grpo import resolve
from grpo.dtypes import DTYPES
from grpo.errors import ConfigError, UserError

GB = 1e9  # the plan speaks decimal GB throughout, as GPU vendors label cards ("80 GB")
HEADROOM = 0.90  # a phase fits when it needs at most this share of the GPU

# The CUDA context, cuBLAS/cuDNN workspaces and the kernels loaded: memory the process holds outside torch's caching
# allocator (about 0.5-1 GB on recent drivers; gpu_check's "context" figure measures it). NCCL's buffers come on top
# on more than one GPU.
CONTEXT_BYTES = 1.0 * GB
NCCL_BYTES = 0.5 * GB
# Fragmentation: reserved minus allocated in torch's caching allocator, as a share of what the trainer allocates.
# Expandable segments would shrink it but are refused with vLLM's sleep mode (grpo validate), so the plan does not
# count on them. gpu_check's "reserved_minus_allocated" figures measure it.
FRAGMENTATION = 0.05

# The vocabulary pass's peak, in bytes per element of one [chunk, V] tensor. Measured on CPU with torch's memory
# profiler (torch.profiler with profile_memory=True: the running sum of every allocation and free) around forward +
# backward of grpo.objectives.loss.chunked_logprobs_and_entropy at V = 152,064 with bf16 hidden states and head, over
# twice as many positions as the chunk: the peak less the head's gradient (counted with the gradients) was 20.0 bytes
# per [chunk, V] element at chunks of 128, 256 and 512 positions, with or without the entropy's gradient: the bf16
# logits (2), the fp32 scaled logits (4) and exp() (4) rebuilt in the backward, and their fp32 and bf16 gradients.
# A micro-batch that fits one chunk (the one-piece pass, no recomputation) measured 19.5. CUDA kernels may keep
# other temporaries: gpu_check's memory figures check the whole step.
VOCAB_BYTES_PER_ELEMENT = 20.0

# Activations, bytes per token per decoder layer (Llama / Qwen2 / Mistral decoders, sdpa or flash attention: no
# [T, T] term). Counted tensor by tensor from what autograd saves (after Korthikanti et al. 2022, "Reducing
# Activation Recomputation in Large Transformer Models", sec. 4, redone for a SwiGLU MLP, grouped-query attention and
# RMSNorm). In the compute dtype: each norm's normalised value and its output (4H for the two), q, k and v as attention
# saves them and its output, which o_proj takes as it is (2q + 2kv), gate, up, silu(gate) and their product (4I).
# In fp32: each norm's input (RMSNorm computes in fp32: 2 x 4H) and rstd, and attention's logsumexp per head.
# tests/test_plan.py checks this count against autograd's saved tensors of a transformers Qwen2 layer (exact).
# The backward's peak adds transient gradients. Measured on CPU with the profiler as for the vocabulary pass (a Qwen2
# of H 512, I 1536, 8 heads / 2 KV, bf16, sdpa, 2048 tokens; 4 layers against 2, gradients of the activations only):
# per layer and token the slope is exactly layer_activation_bytes without checkpointing and 2.0 H with it (the layer's
# input); the peak adds 0.43 of a layer without checkpointing and 1.17 layers with it (the recomputed layer and its
# gradients), besides ~7 H outside the layers. The plan takes 1 and 1.5 layers, and 8 H outside.
TRANSIENT_LAYERS = 1.0
TRANSIENT_LAYERS_CHECKPOINTED = 1.5

# vLLM, besides weights and KV cache: its profile run's activations (one forward of max_num_batched_tokens: the fused
# qkv and gate_up outputs, the activation, a few hidden-state buffers) and the sampler over max_num_seqs rows of
# fp32 logits (logits, probabilities, the sorted copy top-p takes), plus CUDA graphs' private pool.
VLLM_GRAPHS_BYTES = 0.5 * GB
SAMPLER_BYTES_PER_LOGIT = 12  # three fp32 [rows, V] tensors
# While asleep (sleep mode) vLLM has handed its weights and KV cache back; its CUDA graph pool stays.
VLLM_ASLEEP_BYTES = VLLM_GRAPHS_BYTES
VLLM_DEFAULT_SEQS_CAP = 1024  # grpo.sampling.vllm.MAX_DEFAULT_SEQS
VLLM_MIN_BATCHED_TOKENS = 8192  # grpo.sampling.vllm.MIN_BATCHED_TOKENS

LORA_DIMS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ---------------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on in a decoder's config.json."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: a norm over each head's q and k
    model_type: str = ""

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def lora_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer LoRA can target."""
        H, I, q, kv = self.hidden, self.intermediate, self.q_dim, self.kv_dim
        return {"q_proj": (H, q), "k_proj": (H, kv), "v_proj": (H, kv), "o_proj": (q, H),
                "gate_proj": (H, I), "up_proj": (H, I), "down_proj": (I, H)}

    def layer_parameters(self) -> int:
        H, I, q, kv = self.hidden, self.intermediate, self.q_dim, self.kv_dim
        attention = H * q + 2 * H * kv + q * H
        attention += (q + 2 * kv) * self.qkv_bias + H * self.o_bias + 2 * self.head_dim * self.qk_norm
        mlp = 3 * H * I + (2 * I + H) * self.mlp_bias
        return attention + mlp + 2 * H  # + the two RMSNorm weights

    def root_parameters(self) -> int:
        """Embeddings, final norm and head: FSDP2's root unit."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def parameters(self) -> int:
        return self.layers * self.layer_parameters() + self.root_parameters()

    def lora_parameters(self, r: int, targets: list[str]) -> int:
        dims = self.lora_dims()
        return self.layers * sum(r * sum(dims[t]) for t in set(targets) if t in dims)


REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def model_shape(config: dict[str, Any], source: str = "config.json") -> ModelShape:
    """A ModelShape from a transformers config.json (a multimodal model's text_config is the decoder's)."""
    if isinstance(config.get("text_config"), dict):
        config = {**config, **config["text_config"]}
    missing = [k for k in REQUIRED if not isinstance(config.get(k), int)]
    if missing:
        raise UserError(f"model.path: {source} has no {', '.join(missing)}: grpo plan sizes decoder-only models of "
                        f"the Llama / Qwen2 / Mistral kind from those keys; give the model's own config.json")
    experts = next((k for k in ("num_experts", "num_local_experts", "n_routed_experts") if config.get(k)), None)
    if experts:
        raise UserError(f"model.path: {source} describes a mixture-of-experts model ({experts}="
                        f"{config[experts]}); grpo plan sizes dense decoders only, so it cannot plan this one")
    model_type = str(config.get("model_type", ""))
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    attention_bias = bool(config.get("attention_bias", False))
    return ModelShape(
        hidden=config["hidden_size"], intermediate=config["intermediate_size"], layers=config["num_hidden_layers"],
        heads=heads, kv_heads=config.get("num_key_value_heads") or heads, head_dim=head_dim,
        vocab=config["vocab_size"],
        # transformers' decoder configs (LlamaConfig, Qwen2Config, ...) default to an untied head
        tied=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or attention_bias,  # Qwen2 always biases q, k, v; Llama when asked
        o_bias=attention_bias and model_type != "qwen2", mlp_bias=bool(config.get("mlp_bias", False)),
        qk_norm=model_type.startswith("qwen3"), model_type=model_type)


def _repo_models() -> Path:
    return Path(__file__).resolve().parents[1] / "recipes" / "model-configs"


def find_model_config(path: str, recipe_dir: Path | None = None) -> Path:
    """The config.json that describes model.path: a local directory's own; a demo model's shipped one; for a hub
    id, model-configs/<org>/<name>/config.json beside the recipe, then the repo's recipes/model-configs/, then the
    Hugging Face cache if the model was downloaded (none of these reads the network)."""
    if path.startswith("demo:"):
        from grpo.demo import SHIPPED

        found = SHIPPED / path.removeprefix("demo:") / "config.json"
        if found.is_file():
            return found
        raise UserError(f"model.path: {path}: no shipped config.json for this demo model at {found}")
    local = Path(path).expanduser()
    if local.is_dir():
        if (local / "config.json").is_file():
            return local / "config.json"
        raise UserError(f"model.path: {path} has no config.json; it is not a Hugging Face model directory")
    from grpo.modeling import looks_like_hub_id

    if not looks_like_hub_id(path) or Path(Path(path).parts[0]).is_dir():  # a local path that is not there
        raise UserError(f"model.path: {path} is not a directory (relative paths start at {Path.cwd()}); give a model "
                        f"directory with its config.json (build it first if a make target does, e.g. `make smollm2`)")
    places = list(dict.fromkeys(([recipe_dir.resolve() / "model-configs"] if recipe_dir is not None else [])
                                + [_repo_models()]))  # beside the recipe first; once if that is recipes/
    for root in places:
        if (root / path / "config.json").is_file():
            return root / path / "config.json"
    try:
        from huggingface_hub import try_to_load_from_cache  # reads the local cache only

        cached = try_to_load_from_cache(path, "config.json")
        if isinstance(cached, str):
            return Path(cached)
    except Exception:  # noqa: BLE001 - no hub library or a malformed id: the error below says what to do
        pass
    looked = ", ".join(str(r / path / "config.json") for r in places)
    raise UserError(f"model.path: {path}: no config.json for it here (looked at {looked} and the Hugging Face "
                    f"cache); put the model's config.json at {places[0] / path / 'config.json'}, or point model.path "
                    f"at a local model directory")


def read_model_shape(path: str, recipe_dir: Path | None = None) -> tuple[ModelShape, Path]:
    found = find_model_config(path, recipe_dir)
    try:
        config = json.loads(found.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"model.path: {found} is not readable JSON ({exc}); give the model's config.json") from exc
    return model_shape(config, str(found)), found


@dataclass(frozen=True)
class ScoringModel:
    """A reward model the trainer holds on its own device (rewards.reward_model, one copy per rank), in the
    compute dtype, and the texts it scores in one forward."""

    label: str  # the recipe's reward name and the model's path, for the note
    shape: ModelShape
    batch_size: int
    max_tokens: int | None
    generates: int = 0  # a generative judge's reply tokens (rewards.judge, backend transformers); 0: a classifier

    def parameters(self) -> int:
        """A sequence classifier: the decoder's layers, embeddings and final norm, and a one-row score head in place
        of the LM head; a generative judge keeps its LM head (counted untied: the larger case)."""
        s = self.shape
        head = s.vocab * s.hidden if self.generates else s.hidden
        return s.layers * s.layer_parameters() + s.vocab * s.hidden + s.hidden + head

    def transient_bytes(self, tokens: int, dtype_bytes: int, flash: bool) -> float:
        """One batch's forward without autograd (one layer's tensors alive at once), and a judge's KV cache over its
        prompt and reply."""
        tokens = min(tokens, self.max_tokens or tokens)
        forward = self.batch_size * tokens * layer_activation_bytes(self.shape, dtype_bytes, flash)
        if not self.generates:
            return forward
        return forward + self.batch_size * (tokens + self.generates) * kv_bytes_per_token(self.shape, dtype_bytes)


def scoring_models(cfg: RecipeConfig, recipe_dir: Path | None = None) -> list[ScoringModel]:
    """The reward models a recipe puts on the trainer's GPUs: grpo's own rewards that declare one (a
    `planned_model` on the reward factory). A user's plugin is not imported here (plans never run user code)."""
    from rewards.registry import is_builtin, load_reward, reward_target

    found = []
    for i, reward in enumerate(cfg.rewards):
        try:
            target, _ = reward_target(reward.name)
        except UserError:
            continue  # validate names the unknown reward; the plan counts what it can find
        planned = getattr(load_reward(reward.name), "planned_model", None) if is_builtin(target) else None
        if planned is None:
            continue
        model = planned(reward.args)
        if model is None:  # e.g. a judge behind an endpoint: nothing on the trainer's device
            continue
        arg = model.get("arg", "path")  # the args key that names the model
        if not model["path"]:
            raise UserError(f"rewards[{i}].args.{arg}: required; grpo plan sizes the reward model from its "
                            f"config.json")
        try:
            shape, _ = read_model_shape(model["path"], recipe_dir)
        except UserError as exc:
            raise UserError(f"rewards[{i}].args.{arg} ({reward.name}): {str(exc).removeprefix('model.path: ')}") \
                from exc
        found.append(ScoringModel(f"{reward.name} {model['path']}", shape, int(model["batch_size"]),
                                  model["max_tokens"], int(model.get("generates", 0))))
    return found


# ---------------------------------------------------------------------------------------------------- pure arithmetic


def layer_activation_bytes(shape: ModelShape, dtype_bytes: int, flash: bool) -> float:
    """Bytes autograd keeps per token for one decoder layer (see the comment on TRANSIENT_LAYERS). sdpa with a
    mask (packed or padded rows) gets K and V repeated to every head (transformers' repeat_kv) before attention
    saves them; flash-attention kernels take grouped K and V as they are."""
    H, I, q = shape.hidden, shape.intermediate, shape.q_dim
    kv = shape.kv_dim if flash else q
    saved = dtype_bytes * (4 * H + 2 * q + 2 * kv + 4 * I)
    return saved + 2 * 4 * H + 2 * 4 + 4 * shape.heads  # fp32: the norms' inputs and rstd, attention's logsumexp


def activation_bytes_per_token(shape: ModelShape, dtype_bytes: int, checkpointing: bool, flash: bool) -> float:
    """Peak activation bytes per token of a micro-batch, forward and backward. Without checkpointing: every layer's
    saved tensors plus the backward's transients. With: every layer's input (the residual stream) plus one layer
    recomputed in the backward and its gradients. Outside the layers: the embedding output and the final norm's
    upcast input and output."""
    per_layer = layer_activation_bytes(shape, dtype_bytes, flash)
    outside = (2 * dtype_bytes + 4) * shape.hidden
    if checkpointing:
        return shape.layers * dtype_bytes * shape.hidden + TRANSIENT_LAYERS_CHECKPOINTED * per_layer + outside
    return (shape.layers + TRANSIENT_LAYERS) * per_layer + outside


def kv_bytes_per_token(shape: ModelShape, dtype_bytes: int) -> int:
    """K and V of every layer for one token: 2 x layers x kv_heads x head_dim x dtype bytes."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype_bytes


def vocab_pass_bytes(shape: ModelShape, chunk: int, positions: int) -> float:
    """The chunked log-prob / entropy pass: a micro-batch with at most `chunk` kept positions runs as one piece."""
    return VOCAB_BYTES_PER_ELEMENT * min(chunk, positions) * shape.vocab


def vllm_activation_bytes(shape: ModelShape, dtype_bytes: int, batched_tokens: int, seqs: int) -> float:
    """vLLM's profile-run peak besides weights and KV (see VLLM_GRAPHS_BYTES)."""
    forward = batched_tokens * dtype_bytes * (shape.q_dim + 2 * shape.kv_dim + 3 * shape.intermediate
                                              + 4 * shape.hidden)
    sampler = seqs * shape.vocab * SAMPLER_BYTES_PER_LOGIT
    return forward + sampler + VLLM_GRAPHS_BYTES


def micro_batch_tokens(cfg: RecipeConfig, gpus: int) -> int:
    """Positions of the largest micro-batch: train.max_tokens_per_micro_batch when set (a sequence is never split,
    so at least one full-length sequence), else micro_batch_size full-length sequences; never more than a rank's
    share of the step."""
    full = cfg.data.max_prompt_tokens + resolve.completion_tokens(cfg.sampler, cfg.environment)
    rows = math.ceil(cfg.train.prompts_per_step / gpus) * cfg.sampler.group_size
    if cfg.train.max_tokens_per_micro_batch > 0:
        return max(full, min(cfg.train.max_tokens_per_micro_batch, rows * full))
    return min(cfg.train.micro_batch_size, rows) * full


# ---------------------------------------------------------------------------------------------------- the plan


@dataclass
class Item:
    name: str
    generation: float  # bytes per GPU held in the generation phase
    update: float  # ... and in the update phase (forward, backward, optimizer step)
    note: str


@dataclass
class Fix:
    change: list[str]  # overrides (and --gpus N) that make the change
    fits: bool
    peak_bytes: float
    gpus: int


@dataclass
class Plan:
    recipe: str
    model: str
    config_file: str
    shape: ModelShape
    gpus: int
    gpu_bytes: float
    strategy: str
    compute_dtype: str
    master_dtype: str
    lora: bool
    tokens_per_micro_batch: int
    items: list[Item]
    kv_cache: dict[str, Any] | None
    host: dict[str, float]
    host_bytes: float | None = None
    problems: list[str] = field(default_factory=list)
    fixes: list[Fix] = field(default_factory=list)

    @property
    def limit_bytes(self) -> float:
        return HEADROOM * self.gpu_bytes

    def phase_bytes(self, phase: str) -> float:
        return sum(getattr(i, phase) for i in self.items)

    @property
    def peak_phase(self) -> str:
        return "update" if self.phase_bytes("update") >= self.phase_bytes("generation") else "generation"

    @property
    def peak_bytes(self) -> float:
        return self.phase_bytes(self.peak_phase)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.limit_bytes and not self.problems

    def item(self, name: str) -> Item:
        return next(i for i in self.items if i.name == name)

    def biggest(self, n: int = 3) -> list[Item]:
        phase = self.peak_phase
        return sorted((i for i in self.items if getattr(i, phase) > 0), key=lambda i: -getattr(i, phase))[:n]

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe, "model": self.model, "config_file": self.config_file,
            "shape": asdict(self.shape), "parameters": self.shape.parameters(),
            "gpus": self.gpus, "gpu_memory_bytes": self.gpu_bytes, "limit_bytes": self.limit_bytes,
            "headroom": HEADROOM, "strategy": self.strategy, "compute_dtype": self.compute_dtype,
            "master_dtype": self.master_dtype, "lora": self.lora, "tokens_per_micro_batch": self.tokens_per_micro_batch,
            "items": {i.name: {"generation_bytes": i.generation, "update_bytes": i.update, "note": i.note}
                      for i in self.items},
            "phases": {"generation_bytes": self.phase_bytes("generation"), "update_bytes": self.phase_bytes("update")},
            "peak_phase": self.peak_phase, "peak_bytes": self.peak_bytes, "kv_cache": self.kv_cache,
            "host": self.host, "host_memory_bytes": self.host_bytes, "fits": self.fits, "problems": self.problems,
            "biggest": [i.name for i in self.biggest()],
            "fixes": [asdict(f) for f in self.fixes],
        }


def resolve_layout(cfg: RecipeConfig, gpus: int) -> str:
    """The strategy the trainer takes (grpo.resolve.strategy): none | ddp | fsdp. LoRA on several GPUs is planned
    as ddp, the strategy grpo.rules asks such a recipe for (adapters are not sharded)."""
    if cfg.model.lora.enabled and gpus > 1:
        return "ddp"
    return resolve.strategy(cfg.distributed, gpus, cfg.model)


def plan_memory(cfg: RecipeConfig, shape: ModelShape, gpus: int, gpu_bytes: float, host_bytes: float | None = None,
                recipe: str = "", config_file: str = "", scorers: tuple[ScoringModel, ...] = ()) -> Plan:
    """Every item of memory per GPU in both phases; pure (the fixes are planned by plan_with_fixes)."""
    if gpus < 1:
        raise UserError(f"--gpus: must be >= 1, got {gpus}")
    if gpu_bytes <= 0:
        raise UserError(f"--gpu-memory-gb: must be > 0, got {gpu_bytes / GB:g}")
    m, t, s = cfg.model, cfg.train, cfg.sampler
    bc, bm = DTYPES[m.dtype], DTYPES[m.master_dtype]
    br = DTYPES[cfg.distributed.reduce_dtype or m.master_dtype]
    layout = resolve_layout(cfg, gpus)
    shard = gpus if layout == "fsdp" else 1
    P, root, layer = shape.parameters(), shape.root_parameters(), shape.layer_parameters()
    items: list[Item] = []

    def add(name: str, generation: float, update: float, note: str) -> None:
        items.append(Item(name, float(generation), float(update), note))

    sharded = f"sharded 1/{gpus}" if layout == "fsdp" and gpus > 1 else "whole" if gpus == 1 else "whole on every GPU"
    if m.lora.enabled:
        A = shape.lora_parameters(m.lora.r, m.lora.target_modules)
        add("parameters", P * bc, P * bc, f"the frozen base, {m.dtype}, whole on every GPU")
        add("master_weights", A * bm, A * bm, f"LoRA adapters ({A / 1e6:.1f} M, r={m.lora.r}), {m.master_dtype}")
        buckets = A * bm if gpus > 1 else 0
        add("gradients", 0, A * bm + buckets, "the adapters' gradients" + (" and DDP's buckets" if buckets else ""))
        add("optimizer", 2 * A * bm, 2 * A * bm, f"AdamW's two moments of the adapters, {m.master_dtype}")
    else:
        add("master_weights", P * bm / shard, P * bm / shard, f"{m.master_dtype}, {sharded}")
        add("optimizer", 2 * P * bm / shard, 2 * P * bm / shard, f"AdamW's two moments, {m.master_dtype}, {sharded}")
        if layout == "fsdp":
            # the root and two layers gathered in the compute dtype while the pass runs; the gradients of the unit
            # being reduced exist unsharded in the compute dtype and again in the reduce dtype
            in_flight = (root + layer) * (bc + br)
            add("parameters", 0, (root + 2 * layer) * bc,
                f"{m.dtype} copies gathered for the pass: the root (embeddings{', head' if not shape.tied else ''}, "
                f"final norm) and two layers")
            add("gradients", 0, P * bm / shard + in_flight,
                f"{m.master_dtype}, {sharded}, freed after each step; and one unit's unsharded gradients in flight "
                f"({m.dtype}, then {cfg.distributed.reduce_dtype or m.master_dtype} to reduce)")
        else:
            copies = P * bc if bc != bm else 0  # autocast's casts of the whole model, saved for the backward
            add("parameters", 0, copies, f"autocast's {m.dtype} copies of the weights" if copies
                else "the master weights are the compute weights")
            buckets = P * bm if layout == "ddp" else 0
            add("gradients", 0, P * bm + buckets, f"{m.master_dtype}, whole" + (", plus DDP's gradient buckets"
                                                                                 if buckets else ""))
    reference = t.beta > 0 and not m.lora.enabled
    ref_resident = P * bc / shard if reference else 0
    # a no-grad forward leaves FSDP's root gathered until the next backward
    ref_gathered = root * bc if reference and layout == "fsdp" else 0
    add("reference", ref_resident, ref_resident + ref_gathered,
        f"frozen {m.dtype} copy, {sharded}" if reference else "none (train.beta = 0, or LoRA: adapters off)")

    tokens = micro_batch_tokens(cfg, gpus)
    flash = (m.attn_implementation or "").startswith("flash")
    act = tokens * activation_bytes_per_token(shape, bc, m.gradient_checkpointing, flash)
    add("activations", 0, act, f"{tokens:,} tokens per micro-batch, "
        f"{'with' if m.gradient_checkpointing else 'without'} gradient checkpointing")
    chunk = min(t.vocab_chunk_tokens, tokens)
    add("vocab_pass", 0, vocab_pass_bytes(shape, t.vocab_chunk_tokens, tokens),
        f"[{chunk:,} x {shape.vocab:,}] at {VOCAB_BYTES_PER_ELEMENT:g} bytes an element (measured on CPU)")

    full = cfg.data.max_prompt_tokens + resolve.completion_tokens(s, cfg.environment)
    if scorers:
        weights = sum(r.parameters() * bc for r in scorers)
        forward = max(r.transient_bytes(full, bc, flash) for r in scorers)
        add("reward_models", weights + forward, weights,
            f"{', '.join(r.label for r in scorers)}: {sum(r.parameters() for r in scorers) / 1e9:.2f} B parameters, "
            f"{m.dtype}, whole on every GPU; scoring forwards of {max(r.batch_size for r in scorers)} texts")
    kv_info = None
    problems: list[str] = []
    rows = math.ceil(t.prompts_per_step / gpus) * s.group_size
    if s.backend == "vllm":
        v = s.vllm
        tp = max(1, v.tensor_parallel_size)
        weights = P * bc / tp
        model_len = resolve.max_model_len(cfg.data, s, cfg.environment)
        batched = v.max_num_batched_tokens or max(VLLM_MIN_BATCHED_TOKENS, model_len)
        seqs = v.max_num_seqs or min(rows, VLLM_DEFAULT_SEQS_CAP, batched)
        vact = vllm_activation_bytes(shape, bc, batched, seqs)
        if v.kv_cache_memory_bytes is not None:
            kv = float(v.kv_cache_memory_bytes)
            share_note = "sampler.vllm.kv_cache_memory_bytes"
        else:
            kv = v.gpu_memory_utilization * gpu_bytes - weights - vact
            share_note = f"gpu_memory_utilization {v.gpu_memory_utilization} x {gpu_bytes / GB:.0f} GB"
        per_token = kv_bytes_per_token(shape, bc)
        kv_tokens = max(0, int(kv // per_token))
        kv_info = {"bytes": max(kv, 0.0), "bytes_per_token": per_token, "tokens": kv_tokens,
                   "sequence_tokens": model_len, "sequences": kv_tokens // model_len,
                   "max_num_seqs": seqs, "max_num_batched_tokens": batched}
        awake = not v.enable_sleep_mode
        add("vllm_weights", weights, weights if awake else 0,
            f"{m.dtype}, whole in each GPU's engine" + ("" if awake else "; released while asleep"))
        add("vllm_activations", vact, vact if awake else VLLM_ASLEEP_BYTES,
            f"profile run of {batched:,} tokens, sampler over {seqs} rows, CUDA graphs"
            + ("" if awake else "; the graphs stay while asleep"))
        add("kv_cache", max(kv, 0.0), max(kv, 0.0) if awake else 0,
            f"vLLM: {kv_tokens:,} tokens = {kv_tokens // model_len} sequences of {model_len:,} ({share_note})"
            + ("" if awake else "; released while asleep"))
        if kv_tokens < model_len:
            fix = ("raise sampler.vllm.kv_cache_memory_bytes" if v.kv_cache_memory_bytes is not None else
                   f"raise sampler.vllm.gpu_memory_utilization (at least "
                   f"{math.ceil(100 * (weights + vact + model_len * per_token) / gpu_bytes) / 100:.2f})")
            problems.append(f"sampler.vllm: the KV cache holds {kv_tokens:,} tokens, less than one sequence of "
                            f"{model_len:,} (after {weights / GB:.1f} GB of weights and {vact / GB:.1f} GB of "
                            f"activations in vLLM's {share_note}); vLLM would refuse to start: {fix}")
    else:
        # the transformers sampler decodes with the policy's weights gathered once (FSDP) or cast (autocast)
        gathered = 0 if m.lora.enabled or (layout == "none" and bc == bm) else P * bc
        gen_rows = max(1, s.generation_batch_size // s.group_size) * s.group_size
        per_token = kv_bytes_per_token(shape, bc)
        add("sampler_weights", gathered, 0, f"{m.dtype} weights gathered for decoding" if gathered else
            "decodes with the resident weights")
        add("kv_cache", gen_rows * full * per_token, 0,
            f"transformers sampler: {gen_rows} rows x {full:,} positions")
        add("sampler_logits", gen_rows * shape.vocab * SAMPLER_BYTES_PER_LOGIT, 0,
            f"fp32 logits and probabilities of {gen_rows} rows")

    add("cuda_context", CONTEXT_BYTES + (NCCL_BYTES if gpus > 1 else 0),
        CONTEXT_BYTES + (NCCL_BYTES if gpus > 1 else 0),
        f"CUDA context and workspaces{' and NCCL buffers' if gpus > 1 else ''} (an allowance)")
    # vLLM's share is its own budget (and its own memory pool under sleep mode): fragmentation is the trainer's
    own = {"cuda_context", "vllm_weights", "vllm_activations"} | ({"kv_cache"} if s.backend == "vllm" else set())
    trainer = [i for i in items if i.name not in own]
    add("fragmentation", FRAGMENTATION * sum(i.generation for i in trainer),
        FRAGMENTATION * sum(i.update for i in trainer),
        f"{FRAGMENTATION:.0%} of what the trainer allocates (an allowance)")

    host = host_bytes_estimate(cfg, shape, gpus)
    if host_bytes is not None and host["checkpoint_rank0_bytes"] + host["vllm_sleep_offload_bytes_per_node"] \
            > HEADROOM * host_bytes:
        need = host["checkpoint_rank0_bytes"] + host["vllm_sleep_offload_bytes_per_node"]
        problems.append(f"host memory: rank 0's node needs {need / GB:.1f} GB at a checkpoint, over "
                        f"{HEADROOM:.0%} of {host_bytes / GB:.0f} GB; use a node with more memory")
    return Plan(recipe=recipe, model=m.path, config_file=config_file, shape=shape, gpus=gpus, gpu_bytes=gpu_bytes,
                strategy=layout, compute_dtype=m.dtype, master_dtype=m.master_dtype, lora=m.lora.enabled,
                tokens_per_micro_batch=tokens, items=items, kv_cache=kv_info, host=host, host_bytes=host_bytes,
                problems=problems)


def host_bytes_estimate(cfg: RecipeConfig, shape: ModelShape, gpus: int) -> dict[str, float]:
    """Host memory: rank 0 gathers the whole checkpoint to its CPU (every other rank sends shards and keeps
    nothing); vLLM's sleep level 1 keeps each engine's weights in host memory while it sleeps."""
    m = cfg.model
    bc, bm = DTYPES[m.dtype], DTYPES[m.master_dtype]
    P = shape.parameters()
    if m.lora.enabled:
        A = shape.lora_parameters(m.lora.r, m.lora.target_modules)
        rank0 = P * bc + 3 * A * bm  # the merged model (built on the CPU) and the adapters' weights and AdamW state
    else:
        rank0 = 3 * P * bm  # the master weights and AdamW's two moments, whole
    v = cfg.sampler.vllm
    offload = P * bc if cfg.sampler.backend == "vllm" and v.enable_sleep_mode and v.sleep_level == 1 else 0
    return {"checkpoint_rank0_bytes": float(rank0), "checkpoint_other_ranks_bytes": 0.0,
            "vllm_sleep_offload_bytes_per_rank": float(offload),
            "vllm_sleep_offload_bytes_per_node": float(offload * min(gpus, 8)),
            "checkpoint_disk_bytes": float(rank0),
            "checkpoints_kept_disk_bytes": float(rank0 * cfg.checkpoint.keep_last)}


# ---------------------------------------------------------------------------------------------------- fixes


def with_overrides(cfg: RecipeConfig, changes: dict[str, Any]) -> RecipeConfig:
    """A copy of cfg with dotted keys set (values already typed)."""
    out = copy.deepcopy(cfg)
    for key, value in changes.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = getattr(node, part)
        setattr(node, last, value)
    return out


def _candidate_fixes(cfg: RecipeConfig, plan: Plan) -> list[list[tuple[dict[str, Any], int]]]:
    """The kinds of fix worth planning for a plan that does not fit, most useful first; each a list of
    (overrides, gpus) from the mildest value to the strongest."""
    m, t, s = cfg.model, cfg.train, cfg.sampler
    kinds: list[list[tuple[dict[str, Any], int]]] = []
    if not m.lora.enabled:
        kinds.append([({"model.lora.enabled": True}, plan.gpus)])
        kinds.append([({}, n) for n in (2, 4, 8, 16, 32, 64) if n > plan.gpus])
    if not m.gradient_checkpointing:
        kinds.append([({"model.gradient_checkpointing": True}, plan.gpus)])
    full = cfg.data.max_prompt_tokens + resolve.completion_tokens(s, cfg.environment)
    budgets = []
    budget = 1 << int(math.log2(max(plan.tokens_per_micro_batch - 1, 1)))  # the next power of two down
    while budget >= full:
        budgets.append(budget)
        budget //= 2
    kinds.append([({"train.max_tokens_per_micro_batch": b}, plan.gpus) for b in budgets])
    kinds.append([({"train.vocab_chunk_tokens": c}, plan.gpus) for c in (1024, 512, 256) if c < t.vocab_chunk_tokens])
    if s.backend == "vllm":
        v = s.vllm
        if not v.enable_sleep_mode and plan.phase_bytes("update") > plan.limit_bytes:
            kinds.append([({"sampler.vllm.enable_sleep_mode": True}, plan.gpus)])
        # a KV cache too small for one sequence wants more room; a generation phase over the limit, less
        over = plan.phase_bytes("generation") > plan.limit_bytes
        if v.kv_cache_memory_bytes is None and (plan.problems or over):
            step = 0.05 if plan.problems else -0.05
            utils = [round(v.gpu_memory_utilization + step * i, 2) for i in range(1, 19)]
            kinds.append([({"sampler.vllm.gpu_memory_utilization": u}, plan.gpus) for u in utils if 0.05 <= u <= 0.9])
    return [k for k in kinds if k]


def _describe(changes: dict[str, Any], gpus: int, base_gpus: int) -> list[str]:
    words = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in changes.items()]
    if gpus != base_gpus:
        words.append(f"--gpus {gpus} (torchrun --nproc-per-node {gpus})")
    return words


def plan_with_fixes(cfg: RecipeConfig, shape: ModelShape, gpus: int, gpu_bytes: float, host_bytes: float | None = None,
                    recipe: str = "", config_file: str = "", scorers: tuple[ScoringModel, ...] = ()) -> Plan:
    """The plan, and when it does not fit, each kind of fix planned on its own: the mildest value that fits (fewest
    GPUs, largest token budget, ...), else the strongest value's figure; when no single fix fits, the first pairs
    of kinds that do."""
    plan = plan_memory(cfg, shape, gpus, gpu_bytes, host_bytes, recipe, config_file, scorers)
    if plan.fits:
        return plan

    def attempt(changes: dict[str, Any], n: int) -> Fix:
        if changes.get("model.lora.enabled") and n > 1:
            changes = {**changes, "distributed.strategy": "ddp"}  # LoRA adapters are not sharded (grpo.rules)
        other = plan_memory(with_overrides(cfg, changes), shape, n, gpu_bytes, host_bytes, scorers=scorers)
        return Fix(_describe(changes, n, gpus), other.fits, other.peak_bytes, n)

    def mildest(options: list[tuple[dict[str, Any], int]]) -> Fix:
        fix = None
        for changes, n in options:
            fix = attempt(changes, n)
            if fix.fits:
                break
        return fix

    kinds = _candidate_fixes(cfg, plan)
    fixes = sorted((mildest(k) for k in kinds), key=lambda f: (not f.fits, f.peak_bytes))
    if not any(f.fits for f in fixes):
        pairs = []
        for i, first in enumerate(kinds):
            for second in kinds[i + 1:]:
                fix = mildest([({**c1, **c2}, max(n1, n2)) for c1, n1 in first for c2, n2 in second])
                if fix.fits:
                    pairs.append(fix)
        fixes = sorted(pairs, key=lambda f: f.peak_bytes)[:3] + fixes
    plan.fixes = fixes[:6]
    return plan


# ---------------------------------------------------------------------------------------------------- text


def _gb(x: float) -> str:
    return f"{x / GB:.1f}"


LABELS = {"master_weights": "master weights", "optimizer": "optimizer state (AdamW)", "gradients": "gradients",
          "parameters": "parameters (compute copies)", "reference": "reference model", "activations": "activations",
          "vocab_pass": "vocabulary pass", "vllm_weights": "vLLM weights", "vllm_activations": "vLLM activations",
          "kv_cache": "KV cache", "sampler_weights": "sampler weights", "sampler_logits": "sampler logits",
          "cuda_context": "CUDA context", "fragmentation": "fragmentation",
          "reward_models": "reward models"}


def render(plan: Plan) -> str:
    s = plan.shape
    lines = [f"{plan.recipe or 'recipe'} on {plan.gpus} x {plan.gpu_bytes / GB:.0f} GB "
             f"(a phase fits in {HEADROOM:.0%}: {_gb(plan.limit_bytes)} GB)",
             f"model {plan.model} ({plan.config_file}): {s.parameters() / 1e9:.2f} B parameters, {s.layers} layers, "
             f"hidden {s.hidden}, vocabulary {s.vocab:,}{', tied head' if s.tied else ''}",
             f"{'LoRA' if plan.lora else 'full fine-tuning'}, "
             f"{ {'fsdp': 'FSDP2', 'ddp': 'DDP', 'none': 'one process'}[plan.strategy]} over {plan.gpus} GPU"
             f"{'s' if plan.gpus > 1 else ''}, compute {plan.compute_dtype} over {plan.master_dtype} masters, "
             f"{plan.tokens_per_micro_batch:,} tokens per micro-batch",
             "", f"  {'per GPU, GB':<30} {'generation':>10} {'update':>8}  note"]
    for i in plan.items:
        lines.append(f"  {LABELS.get(i.name, i.name):<30} {_gb(i.generation):>10} {_gb(i.update):>8}  {i.note}")
    lines.append(f"  {'total':<30} {_gb(plan.phase_bytes('generation')):>10} {_gb(plan.phase_bytes('update')):>8}"
                 f"  limit {_gb(plan.limit_bytes)}")
    if plan.kv_cache:
        k = plan.kv_cache
        lines.append(f"vLLM KV cache: {_gb(k['bytes'])} GB at {k['bytes_per_token']:,} bytes a token = "
                     f"{k['tokens']:,} tokens = {k['sequences']:,} full-length sequences of {k['sequence_tokens']:,}")
    h = plan.host
    lines.append(f"host memory at a checkpoint: rank 0 gathers {_gb(h['checkpoint_rank0_bytes'])} GB (full weights "
                 f"and optimizer state), other ranks nothing; on disk {_gb(h['checkpoint_disk_bytes'])} GB a "
                 f"checkpoint" + (f"; vLLM sleep level 1 keeps {_gb(h['vllm_sleep_offload_bytes_per_rank'])} GB per "
                                  f"rank in host memory" if h["vllm_sleep_offload_bytes_per_rank"] else ""))
    peak = plan.peak_bytes
    if plan.fits:
        lines.append(f"fits: the {plan.peak_phase} phase needs {_gb(peak)} GB of {plan.gpu_bytes / GB:.0f} GB "
                     f"({peak / plan.gpu_bytes:.0%})")
        return "\n".join(lines)
    over = peak > plan.limit_bytes
    lines.append("does not fit: " + "; ".join(
        ([f"the {plan.peak_phase} phase needs {_gb(peak)} GB, over {_gb(plan.limit_bytes)} GB "
          f"({HEADROOM:.0%} of {plan.gpu_bytes / GB:.0f} GB)"] if over else []) + plan.problems))
    lines.append("biggest items: " + ", ".join(f"{LABELS.get(i.name, i.name)} {_gb(getattr(i, plan.peak_phase))} GB"
                                               for i in plan.biggest()))
    if plan.fixes:
        lines.append("fixes, each planned:")
        for f in plan.fixes:
            verdict = f"fits, peak {_gb(f.peak_bytes)} GB" if f.fits else f"still {_gb(f.peak_bytes)} GB"
            lines.append(f"  {' '.join(f.change):<64} {verdict}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- entry point


def plan_recipe(recipe: str, overrides: list[str], gpus: int, gpu_memory_gb: float,
                host_memory_gb: float | None = None) -> Plan:
    """Read the recipe (every problem at once, as a ConfigError) and the model's config.json, and plan."""
    from grpo.recipe import load_recipe
    from grpo.rules import world_rules

    cfg = load_recipe(recipe, overrides)
    problems = world_rules(cfg, gpus)
    if problems:
        raise ConfigError(problems, f"{recipe} on {gpus} GPUs")
    recipe_dir = Path(recipe).resolve().parent
    shape, found = read_model_shape(cfg.model.path, recipe_dir)
    return plan_with_fixes(cfg, shape, gpus, gpu_memory_gb * GB,
                           host_memory_gb * GB if host_memory_gb is not None else None,
                           recipe=str(recipe), config_file=_short(found),
                           scorers=tuple(scoring_models(cfg, recipe_dir)))


def _short(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
