"""The GPU check, v2: what `grpo plan` assumes, measured on a short, lent GPU (torch and transformers only: no vLLM, no
flash-attn, no network), in at most 5 minutes.

    python bench/gpu_check.py                        # one GPU: the Qwen2.5-Math-1.5B shape, random weights, bf16
    python bench/gpu_check.py --shape tiny           # anywhere (CI runs this on CPU so the script cannot rot)

Memory is capped with torch.cuda.set_per_process_memory_fraction at --cap-gb (80 GB) whatever the card, so "the
first out-of-memory" means an 80 GB card. Every figure is one JSON line appended to --json (gpu_check.jsonl) as soon
as it is measured, so a run cut off by its time limit still leaves what it got. In order (a section that would
overrun --budget-s is recorded as skipped):

  env        versions and capabilities: torch, transformers, CUDA, the card; transformers' slice_logits_to_keep,
             flex attention, and whether flash-attn and vllm import
  memory     peak allocated and reserved memory of one training step (grpo's policy_update: FSDP2 at world size 1,
             bf16 compute over fp32 masters, gradient checkpointing, the chunked vocabulary pass) against the
             tokens of its micro-batch (4k, 8k, 16k, 32k; the first out-of-memory recorded and the ladder stopped),
             each beside what grpo plan predicts for the same step, item by item
  allocator  reserved minus allocated, before and after empty_cache(); memory outside torch (the CUDA context)
  speed      tokens/s and model FLOPs utilisation of a step in each layout
  precision  fp32 masters vs pure bf16: step time, and the fraction of weights one fused AdamW step at lr 1e-6 moves
  gaps       bf16 log-prob gaps of each train.packing layout against padded rows, with sdpa and flex_attention
             (last: flex attention compiles on first use)

The README ("Will it fit? grpo plan") says how to read the figures and how they correct the plan's constants.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grpo.config import RecipeConfig, TrainConfig  # noqa: E402
from grpo.errors import UserError  # noqa: E402
from grpo.parallel import World, close_world, init_world  # noqa: E402
from grpo.plan import FRAGMENTATION, GB, model_shape, plan_memory, with_overrides  # noqa: E402
from grpo.sampling.base import Completion  # noqa: E402
from grpo.resolve import strategy as resolve_strategy  # noqa: E402
from grpo.train.layout import choose_layout  # noqa: E402
from grpo.train.episodes import Episode, token_batch  # noqa: E402
from grpo.train.packing import micro_batch, plan_micro_batches  # noqa: E402
from grpo.train.precision import resolve_precision  # noqa: E402
from grpo.train.sharding import wrap  # noqa: E402
from grpo.train.update import build_objective, completion_logprobs, policy_update, training_pass  # noqa: E402

# The 1.5B shape is the shipped config grpo plan reads (real vocabulary, 151,936); tiny is for CPU.
SHAPES = {
    "tiny": {"model_type": "qwen2", "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024, "tie_word_embeddings": True,
             "max_position_embeddings": 4096},
    "1.5b": json.loads((ROOT / "recipes" / "model-configs" / "Qwen" / "Qwen2.5-Math-1.5B" / "config.json")
                       .read_text()),
}
# Dense bf16 peak of the chip, FLOP/s (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}
# Update-phase items of grpo plan that torch's caching allocator holds in this check (no vLLM, no reference).
TRAINER_ITEMS = ("master_weights", "optimizer", "gradients", "parameters", "activations", "vocab_pass")


class Recorder:
    """One JSON line per figure, appended and flushed at once."""

    def __init__(self, path: Path):
        self.path = path
        path.write_text("")
        self.rows: list[dict] = []
        self.started = time.monotonic()

    def __call__(self, section: str, **figures: Any) -> dict:
        row = {"section": section, **figures, "at_s": round(time.monotonic() - self.started, 1)}
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        return row


@contextlib.contextmanager
def section_guard(record: Recorder, name: str, started: float, budget_s: float, needs_s: float):
    """Run a section if the budget allows (else record it as skipped); any error is a figure, not the end."""
    left = budget_s - (time.monotonic() - started)
    if left < needs_s:
        record(name, skipped=f"time: {left:.0f} s left of --budget-s {budget_s:.0f}, the section needs ~{needs_s:.0f}")
        yield False
        return
    try:
        yield True
    except torch.OutOfMemoryError as exc:  # noqa: PERF203 - a section's OOM is a result
        record(name, error=f"out of memory: {str(exc).splitlines()[0]}")
    except Exception as exc:  # noqa: BLE001 - keep the other sections' figures coming
        record(name, error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


# ---------------------------------------------------------------------------------------------------- building


def recipe_for(tokens: int, packing: str = "sequences") -> RecipeConfig:
    """The recipe this check's step is, for grpo plan: bf16 compute over fp32 masters, checkpointing, one micro-batch
    of `tokens` positions."""
    cfg = RecipeConfig()
    return with_overrides(cfg, {"model.dtype": "bfloat16", "model.master_dtype": "float32",
                                "model.gradient_checkpointing": True, "train.max_tokens_per_micro_batch": tokens,
                                "train.packing": packing, "train.lr": 1e-6, "train.beta": 0.0,
                                "sampler.backend": "hf"})


def build_policy(shape_name: str, cfg: RecipeConfig, device: torch.device, world: World, attn: str = "sdpa"):
    """The policy as the trainer holds it: loaded in the master dtype, checkpointing on, wrapped by the strategy grpo
    resolves (FSDP2 with bf16 compute at world size 1), and fused AdamW."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    strategy = resolve_strategy(cfg.distributed, world.size, cfg.model)
    init_world(world, device, 900, group_of_one=strategy == "fsdp")
    precision = resolve_precision(cfg.model, strategy, device, cfg.distributed.reduce_dtype)
    config = Qwen2Config(**{k: v for k, v in SHAPES[shape_name].items() if k != "torch_dtype"})
    config._attn_implementation = attn
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(precision.load_dtype)
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers 5.2x's name
    if cfg.model.gradient_checkpointing:
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.train()
    model = wrap(model, strategy, cfg.distributed, device, precision=precision)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.adam_betas),
                                  weight_decay=cfg.train.weight_decay, fused=device.type in ("cpu", "cuda"))
    return model, optimizer, precision


def rows_for(groups: int, group_size: int, prompt_len: int, completion_len: int, vocab: int,
             spread: bool = True) -> list[Episode]:
    """A step's rollouts: completions from a quarter of completion_len to all of it (spread), or all full."""
    gen = torch.Generator().manual_seed(1)
    rollouts = []
    for g in range(groups):
        prompt = torch.randint(3, vocab, (prompt_len,), generator=gen).tolist()
        for i in range(group_size):
            length = (completion_len // 4 + (3 * completion_len // 4) * i // max(group_size - 1, 1)
                      if spread else completion_len)
            ids = torch.randint(3, vocab, (length,), generator=gen).tolist()
            rollouts.append(Episode.one_turn(prompt, Completion(ids, [-1.0] * length, "", "length"), group_id=g,
                                    advantage=1.0 if i % 2 else -1.0))
    return rollouts


def step(model, optimizer, rollouts, train: TrainConfig, layout, device, precision) -> Any:
    objective = build_objective(train, "none", max(r.length for r in rollouts))
    passes = training_pass(train, layout, 1.0, device, autocast=precision.autocast)
    return policy_update(model, None, optimizer, token_batch(rollouts, 0), objective, passes)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clean(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------- sections


def env_section(record: Recorder, device: torch.device, cap_bytes: float | None) -> None:
    import transformers
    from transformers import modeling_utils
    from transformers.models.qwen2 import modeling_qwen2

    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
        flex = True
    except ImportError:
        flex = False
    card = {}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        card = {"device": props.name, "total_memory_bytes": props.total_memory,
                "capability": [props.major, props.minor], "cap_bytes": cap_bytes,
                "bf16": torch.cuda.is_bf16_supported(), "cuda": torch.version.cuda}
    record("env", torch=torch.__version__, transformers=transformers.__version__, python=sys.version.split()[0],
           **card, device_type=device.type,
           slice_logits_to_keep=hasattr(modeling_utils, "slice_logits_to_keep"),
           qwen2_slices_logits_to_keep="slice_logits_to_keep" in vars(modeling_qwen2),
           flex_attention=flex, flash_attn=importable("flash_attn"), vllm=importable("vllm"))


def importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def predicted(shape_name: str, cfg: RecipeConfig, gpu_bytes: float) -> dict[str, float]:
    """grpo plan's update-phase items for this check's step (what torch allocates; context and vLLM aside)."""
    plan = plan_memory(cfg, model_shape(SHAPES[shape_name]), 1, gpu_bytes)
    items = {name: plan.item(name).update for name in TRAINER_ITEMS}
    total = sum(items.values())
    return {"predicted_allocated_bytes": total, "predicted_reserved_bytes": total * (1 + FRAGMENTATION),
            "predicted_items": items, "plan_tokens_per_micro_batch": plan.tokens_per_micro_batch}


def memory_section(record: Recorder, args, device, world) -> tuple:
    """The ladder of micro-batch sizes. Rows are full-length (prompt 256 + completion seq - 256), so a micro-batch
    of T positions holds T / seq rows and (seq - 256) / seq of its positions are completion tokens."""
    seq = args.seq_len
    prompt = min(256, seq // 4)
    ladder = [int(t) for t in args.tokens.split(",")]
    cfg = recipe_for(ladder[0])
    model, optimizer, precision = build_policy(args.shape, cfg, device, world)
    vocab = SHAPES[args.shape]["vocab_size"]
    gpu_bytes = args.cap_gb * GB
    # warm-up: AdamW's state is made by the first step; every later step (the ones measured) starts with it
    layout = choose_layout("sequences", 1, ladder[0], model, device)
    step(model, optimizer, rows_for(1, ladder[0] // seq or 1, prompt, seq - prompt, vocab, spread=False),
         cfg.train, layout, device, precision)
    for tokens in ladder:
        cfg = recipe_for(tokens)
        rows = max(1, tokens // seq)
        rollouts = rows_for(1, rows, prompt, seq - prompt, vocab, spread=False)
        layout = choose_layout("sequences", rows, tokens, model, device)
        expect = predicted(args.shape, with_overrides(cfg, {"data.max_prompt_tokens": prompt,
                                                             "sampler.max_new_tokens": seq - prompt,
                                                             "sampler.group_size": max(rows, 2),
                                                             "train.prompts_per_step": 1}), gpu_bytes)
        optimizer.zero_grad(set_to_none=True)
        clean(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        oom = None
        try:
            stats = step(model, optimizer, rollouts, cfg.train, layout, device, precision)
        except torch.OutOfMemoryError as exc:
            oom = str(exc).splitlines()[0]  # (the exception's frames hold the step's tensors until this block ends)
        if oom is not None:
            optimizer.zero_grad(set_to_none=True)
            clean(device)
            record("memory", tokens=tokens, completion_tokens=rows * (seq - prompt), oom=True, error=oom, **expect)
            break
        sync(device)
        measured = ({"peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
                     "peak_reserved_bytes": torch.cuda.max_memory_reserved(device)} if device.type == "cuda" else
                    {"peak_allocated_bytes": None, "peak_reserved_bytes": None})
        ratio = (round(measured["peak_allocated_bytes"] / expect["predicted_allocated_bytes"], 3)
                 if measured["peak_allocated_bytes"] else None)
        record("memory", tokens=tokens, completion_tokens=rows * (seq - prompt), oom=False,
               step_s=round(time.perf_counter() - t0, 3), measured_over_predicted=ratio,
               loss_finite=math.isfinite(stats.loss), **measured, **expect)
    return model, optimizer, precision


def allocator_section(record: Recorder, device) -> None:
    if device.type != "cuda":
        record("allocator", note="CPU: no caching allocator figures")
        return
    def figures() -> dict:
        free, total = torch.cuda.mem_get_info(device)
        allocated, reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
        return {"allocated_bytes": allocated, "reserved_bytes": reserved,
                "reserved_minus_allocated_bytes": reserved - allocated,
                # what the card has in use beyond torch's reservations: the CUDA context, workspaces, other processes
                "outside_torch_bytes": total - free - reserved}
    before = figures()
    gc.collect()
    torch.cuda.empty_cache()
    record("allocator", before_empty_cache=before, after_empty_cache=figures())


def logprobs_by_rollout(model, rollouts, layout, device, precision) -> dict[int, torch.Tensor]:
    out = {}
    with torch.no_grad():
        batch = token_batch(rollouts, 0)
        for chunk in plan_micro_batches(rollouts, layout):
            mb = micro_batch(batch, chunk, layout, device)
            logp, _ = completion_logprobs(model, mb, 1.0, autocast=precision.autocast)
            for i, r in enumerate(rollouts[chunk.start:chunk.stop]):
                out[id(r)] = logp[i, :r.length].float().cpu()
    return out


def gaps_section(record: Recorder, args, model, device, precision) -> None:
    """Each layout's log-probs against padded rows', both in bf16 with the same kernel; and flex against sdpa."""
    vocab = SHAPES[args.shape]["vocab_size"]
    rollouts = rows_for(args.groups, args.group_size, args.prompt_len, args.completion_len, vocab)
    reference = None
    for kernel in args.attn.split(","):
        try:
            set_kernel(model, kernel)
            padded = logprobs_by_rollout(model, rollouts, choose_layout("padded", args.micro_batch, 0, model, device),
                                         device, precision)
        except Exception as exc:  # noqa: BLE001 - a kernel this torch / transformers cannot run: said, not fatal
            record("gaps", attention=kernel, error=f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
            continue
        if reference is None:
            reference = padded
        else:
            record("gaps", attention=kernel, layout="padded", against="padded sdpa", **_gap(padded, reference))
        for kind in ("sequences", "shared_prompt"):
            try:
                layout = choose_layout(kind, args.micro_batch, args.micro_batch * (args.prompt_len +
                                                                                    args.completion_len), model, device)
                got = logprobs_by_rollout(model, rollouts, layout, device, precision)
            except (UserError, RuntimeError, ValueError) as exc:
                record("gaps", attention=kernel, layout=kind, skipped=str(exc).splitlines()[0])
                continue
            record("gaps", attention=kernel, layout=kind, against=f"padded {kernel}", **_gap(got, padded))
    set_kernel(model, "sdpa")


def set_kernel(model, kernel: str) -> None:
    if hasattr(model, "set_attn_implementation"):  # transformers 5: checks the kernel can run, for every submodule
        model.set_attn_implementation(kernel)
    model.config._attn_implementation = kernel


def _gap(got: dict, ref: dict) -> dict:
    diffs = torch.cat([(got[k] - ref[k]).abs() for k in ref])
    return {"mean_abs_gap": round(diffs.mean().item(), 6), "max_abs_gap": round(diffs.max().item(), 6),
            "tokens": diffs.numel()}


def speed_section(record: Recorder, args, model, optimizer, precision, device) -> None:
    parameters = sum(p.numel() for p in model.parameters())  # at world size 1 a shard is the whole parameter
    vocab = SHAPES[args.shape]["vocab_size"]
    rollouts = rows_for(args.groups, args.group_size, args.prompt_len, args.completion_len, vocab)
    real = sum(len(r.prompt_ids) + r.length for r in rollouts)
    peak = PEAK_BF16.get(next((k for k in PEAK_BF16 if device.type == "cuda" and k in torch.cuda.get_device_name(
        device)), ""), None)
    train = TrainConfig(micro_batch_size=args.micro_batch, loss_aggregation="token_mean", lr=1e-6)
    for kind in args.packing.split(","):
        budget = 0 if kind == "padded" else args.micro_batch * (args.prompt_len + args.completion_len)
        try:
            layout = choose_layout(kind, args.micro_batch, budget, model, device)
        except UserError as exc:
            record("speed", packing=kind, skipped=str(exc))
            continue
        times = []
        for _ in range(args.steps + 1):  # the first step warms kernels and the allocator: not counted
            sync(device)
            t0 = time.perf_counter()
            stats = step(model, optimizer, rollouts, train, layout, device, precision)
            sync(device)
            times.append(time.perf_counter() - t0)
        step_s = sorted(times[1:])[len(times[1:]) // 2]
        record("speed", packing=layout.kind, sequences=len(rollouts), real_tokens=real,
               padded_fraction=round(stats.padded_fraction, 3), step_s=round(step_s, 4),
               tokens_per_s=round(real / step_s, 1),
               mfu=round(6 * parameters * real / step_s / peak, 4) if peak else None)


def moved_fraction(before: list[torch.Tensor], params: list[torch.Tensor]) -> float:
    changed = total = 0
    for b, p in zip(before, params):
        local = p.to_local() if hasattr(p, "to_local") else p
        changed += (local.detach() != b).sum().item()
        total += b.numel()
    return changed / max(total, 1)


def precision_section(record: Recorder, args, world, device) -> None:
    """One AdamW step at lr 1e-6 on each precision, timed; the share of weight elements it changed."""
    vocab = SHAPES[args.shape]["vocab_size"]
    rollouts = rows_for(2, args.group_size, args.prompt_len, args.completion_len, vocab)
    for mode, master in (("fp32_master", "float32"), ("pure_bf16", "bfloat16")):
        cfg = with_overrides(recipe_for(0, "padded"), {"model.master_dtype": master,
                                                                          "train.micro_batch_size": args.micro_batch})
        model, optimizer, precision = build_policy(args.shape, cfg, device, world)
        layout = choose_layout("padded", args.micro_batch, 0, model, device)
        times, moved = [], None
        for i in range(args.steps + 1):
            params = [p for p in model.parameters()]
            before = [(p.to_local() if hasattr(p, "to_local") else p).detach().clone() for p in params] if i == 1 \
                else None
            sync(device)
            t0 = time.perf_counter()
            step(model, optimizer, rollouts, cfg.train, layout, device, precision)
            sync(device)
            times.append(time.perf_counter() - t0)
            if before is not None:  # the second step (AdamW's first is a sign step of size lr for every weight)
                moved = moved_fraction(before, params)
                del before
        record("precision", mode=mode, master_dtype=master, compute_dtype="bfloat16", strategy=precision.kind,
               step_s=round(sorted(times[1:])[len(times[1:]) // 2], 4), lr=1e-6, moved_fraction=round(moved, 4))
        del model, optimizer
        clean(device)


# ---------------------------------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="1.5b", choices=sorted(SHAPES))
    p.add_argument("--tokens", default="4096,8192,16384,32768", help="memory ladder: positions per micro-batch")
    p.add_argument("--seq-len", type=int, default=4096, help="memory ladder: a row's length (prompt 256 + the rest)")
    p.add_argument("--cap-gb", type=float, default=80.0, help="cap torch's memory at this many GB (1e9 bytes)")
    p.add_argument("--budget-s", type=float, default=280.0, help="stop starting sections past this many seconds")
    p.add_argument("--groups", type=int, default=8, help="gaps / speed: prompts in the step")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--completion-len", type=int, default=1024)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up step)")
    p.add_argument("--packing", default="padded,sequences,shared_prompt", help="speed: train.packing layouts")
    p.add_argument("--attn", default="sdpa,flex_attention", help="gaps: attention kernels (the first is the reference)")
    p.add_argument("--sections", default="env,memory,allocator,speed,precision,gaps")
    p.add_argument("--json", default="gpu_check.jsonl", help="the figures, one JSON object a line, written as it goes")
    args = p.parse_args()
    started = time.monotonic()
    record = Recorder(Path(args.json))
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    cap_bytes = None
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        cap_bytes = min(total, args.cap_gb * GB)
        torch.cuda.set_per_process_memory_fraction(cap_bytes / total, device)
    world = World.single()
    wanted = set(args.sections.split(","))
    # rough seconds each section takes on an H100 at the 1.5B shape, to skip what cannot finish within the budget
    needs = {"memory": 60, "allocator": 1, "speed": 40, "precision": 40, "gaps": 60} if args.shape != "tiny" else {}
    held: dict[str, Any] = {}  # the policy the memory section built, reused by gaps and speed

    def policy():
        if "model" not in held:
            held["model"], held["optimizer"], held["precision"] = build_policy(
                args.shape, recipe_for(0), device, world)
        return held["model"], held["optimizer"], held["precision"]

    def run(name: str, body) -> None:
        if name not in wanted:
            return
        with section_guard(record, name, started, args.budget_s,
                           -math.inf if name == "env" else needs.get(name, 0)) as go:
            if go:
                body()

    try:
        run("env", lambda: env_section(record, device, cap_bytes))
        run("memory", lambda: held.update(zip(("model", "optimizer", "precision"),
                                              memory_section(record, args, device, world))))
        run("allocator", lambda: allocator_section(record, device))
        run("speed", lambda: speed_section(record, args, *policy(), device))
        held.clear()  # the precision section builds its own two models
        clean(device)
        run("precision", lambda: precision_section(record, args, world, device))
        # last: flex attention compiles its kernels on first use, the one cost here that is hard to bound
        run("gaps", lambda: gaps_section(record, args, policy()[0], device, policy()[2]))
    finally:
        close_world(world)
        record("done", seconds=round(time.monotonic() - started, 1))


if __name__ == "__main__":
    main()
