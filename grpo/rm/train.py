"""The `grpo rm` loop: Bradley-Terry steps over preference pairs in a seeded order, held-out pairwise accuracy
every train.eval_every steps (metrics.jsonl in output_dir, one line a step, like grpo train's), checkpoints
every checkpoint.every steps, and the finished model in OUTPUT_DIR/model.

Resume is exact: a checkpoint holds the weights, the optimizer, the schedule, the data position and the torch
RNG, so N steps then M more give the same weights as N + M steps at once (tests/test_rm.py checks it)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch
import yaml

from grpo.data import PromptStream
from grpo.errors import UserError
from grpo.io import atomic_dir, write_lines, write_text
from grpo.lock import RunLock
from grpo.rm.checkpoint import (check_changes, load_optimizer, load_state, restore_rng, resume_path,
                                save_checkpoint)
from grpo.rm.config import RmRecipe
from grpo.rm.data import Pair, collate, read_pair_rows, tokenize_pairs
from grpo.rm.loss import bradley_terry_loss, pairwise_accuracy
from grpo.rm.model import autocast_for, load_reward_model
from grpo.schedule import lr_factor

MODEL_DIR = "model"  # OUTPUT_DIR/model: the finished reward model
METRICS_FILE = "metrics.jsonl"


def train_reward_model(cfg: RmRecipe) -> Path:
    """Train (or resume) the run `cfg` describes, holding output_dir's lock (one run per output_dir, as grpo
    train); returns the directory of the finished model."""
    train_rows, eval_rows = read_pair_rows(cfg.data)  # every data problem before any model loads or file is written
    lock = RunLock(Path(cfg.output_dir), "grpo rm").acquire()
    try:
        return _train(cfg, train_rows, eval_rows)
    finally:
        lock.release()


def _train(cfg: RmRecipe, train_rows: list[dict], eval_rows: list[dict]) -> Path:
    from grpo.modeling import load_tokenizer, resolve_device, resolve_model_path

    output_dir = Path(cfg.output_dir)
    resume = resume_path(output_dir, cfg.checkpoint.resume)
    recipe = dataclasses.asdict(cfg)
    state = load_state(resume) if resume is not None else None
    if state is not None:
        check_changes(resume, state["recipe"], cfg)
    device = resolve_device(cfg.device)
    model_path = resume if resume is not None else resolve_model_path(cfg.model.path)
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    train_pairs = tokenize_pairs(train_rows, tokenizer, cfg.data, "training")
    eval_pairs = tokenize_pairs(eval_rows, tokenizer, cfg.data, "held-out")
    torch.manual_seed(cfg.seed)  # a causal LM's new score head is drawn from this
    model = load_reward_model(cfg.model, model_path, tokenizer, device)
    t = cfg.train
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=tuple(t.adam_betas), weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: lr_factor(done, t.steps, t.warmup_steps,
                                                                                    t.lr_schedule))
    stream = PromptStream(train_pairs, cfg.seed, cfg.data.shuffle)
    start = 0
    output_dir.mkdir(parents=True, exist_ok=True)
    if state is not None:
        optimizer.load_state_dict(load_optimizer(resume))
        scheduler.load_state_dict(state["scheduler"])
        stream.load_state_dict(state["data"])
        restore_rng(state)
        start = int(state["step"])
        print(f"resuming from {resume} (step {start})", flush=True)
    write_text(output_dir / "recipe.yaml", yaml.safe_dump(recipe, sort_keys=False))
    metrics = output_dir / METRICS_FILE
    drop_lines_after(metrics, start)
    print(f"grpo rm: {len(train_pairs)} training pairs, {len(eval_pairs)} held-out; {t.steps} steps of "
          f"{t.batch_size} pairs on {device}", flush=True)
    autocast = autocast_for(cfg.model, device)
    pad_id = tokenizer.pad_token_id
    model.train()
    for step in range(start + 1, t.steps + 1):
        began = time.perf_counter()
        record = train_step(model, optimizer, stream.take(t.batch_size), t.micro_batch_size, t.max_grad_norm,
                            pad_id, device, autocast)
        if not math.isfinite(record["loss"]):
            raise UserError(f"grpo rm: the loss is {record['loss']} at step {step} (train.lr={t.lr}, model.dtype="
                            f"{cfg.model.dtype}); the run diverged. Lower train.lr, or train in float32; rerun "
                            f"the same command to resume from the last checkpoint.")
        record["lr"] = scheduler.get_last_lr()[0]
        scheduler.step()
        if step % t.eval_every == 0 or step == t.steps:
            record.update(evaluate(model, eval_pairs, t.eval_batch_size, pad_id, device, autocast))
            model.train()
        record["seconds"] = round(time.perf_counter() - began, 3)
        append_line(metrics, {"step": step, **record})
        print(progress_line(step, t.steps, record), flush=True)
        if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 or step == t.steps:
            save_checkpoint(output_dir, step, model, tokenizer, optimizer, scheduler, stream.state_dict(), recipe,
                            cfg.checkpoint.keep_last)
    final = output_dir / MODEL_DIR
    with atomic_dir(final, replace=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    print(f"reward model written to {final} (loads with AutoModelForSequenceClassification; use it in grpo train "
          f"as rewards: [{{name: reward_model, args: {{path: {final}}}}}])", flush=True)
    return final


def train_step(model, optimizer, batch: list[Pair], micro_batch_size: int, max_grad_norm: float, pad_id: int,
               device: torch.device, autocast) -> dict[str, float]:
    """One optimizer step on `batch`, accumulated over micro-batches whose losses sum to the batch's mean."""
    optimizer.zero_grad(set_to_none=True)
    chosen_all, rejected_all, loss_sum = [], [], 0.0
    for start in range(0, len(batch), micro_batch_size):
        part = batch[start:start + micro_batch_size]
        chosen, rejected = pair_scores(model, part, pad_id, device, autocast)  # [m], [m]
        loss = bradley_terry_loss(chosen, rejected, total_pairs=len(batch))
        loss.backward()
        loss_sum += float(loss.detach())
        chosen_all.append(chosen.detach())
        rejected_all.append(rejected.detach())
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf)
    optimizer.step()
    chosen, rejected = torch.cat(chosen_all), torch.cat(rejected_all)  # [B], [B]
    return {"loss": loss_sum, "accuracy": pairwise_accuracy(chosen, rejected),
            "margin": float((chosen - rejected).mean()), "grad_norm": float(grad_norm)}


def pair_scores(model, pairs: list[Pair], pad_id: int, device: torch.device, autocast) -> tuple[torch.Tensor, ...]:
    """([m] chosen scores, [m] rejected scores) in float32, from one forward over the 2m texts."""
    input_ids, attention = collate(pairs, pad_id)  # [2m, T]
    with autocast:
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits  # [2m, 1]
    scores = logits[:, 0].float()  # [2m]
    return scores[:len(pairs)], scores[len(pairs):]


@torch.no_grad()
def evaluate(model, pairs: list[Pair], batch_size: int, pad_id: int, device: torch.device, autocast) -> dict:
    """Held-out pairwise accuracy, Bradley-Terry loss and mean margin over every held-out pair."""
    model.eval()
    chosen_all, rejected_all = [], []
    for start in range(0, len(pairs), batch_size):
        chosen, rejected = pair_scores(model, pairs[start:start + batch_size], pad_id, device, autocast)
        chosen_all.append(chosen)
        rejected_all.append(rejected)
    chosen, rejected = torch.cat(chosen_all), torch.cat(rejected_all)  # [E], [E]
    return {"eval/accuracy": pairwise_accuracy(chosen, rejected),
            "eval/loss": float(bradley_terry_loss(chosen, rejected)),
            "eval/margin": float((chosen - rejected).mean()), "eval/pairs": len(pairs)}


def progress_line(step: int, steps: int, r: dict) -> str:
    line = f"rm step {step}/{steps}  loss {r['loss']:.4f}  acc {r['accuracy']:.2f}  margin {r['margin']:+.3f}"
    if "eval/accuracy" in r:
        line += f"  | held-out acc {r['eval/accuracy']:.3f}  loss {r['eval/loss']:.4f} ({r['eval/pairs']} pairs)"
    return line


def append_line(path: Path, record: dict) -> None:
    # One write per line, flushed: a crash loses at most the line being written.
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def drop_lines_after(path: Path, step: int) -> None:
    """On resume, drop the lines of steps after the checkpoint (they are written again) and any torn line."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    write_lines(path, kept)
