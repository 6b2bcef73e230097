"""The built-in demo model, `demo:tiny-arith`: a ~1M-parameter Llama with a character tokenizer, given a
short supervised warm start on the demo word problems, built on first use and cached.

Why: the hub is not reachable everywhere this tool must run, and RL needs a starting policy that is right
sometimes (reward variance within groups) and wrong often (room to learn). A one-minute build on a laptop CPU
gives exactly that."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from grpo.errors import UserError

BUILDS = {
    # name: settings that define the build; any change gives a new cache key, so a stale cache is never used
    "tiny-arith": {"version": 1, "seed": 0, "hidden": 128, "layers": 4, "heads": 2, "sft_steps": 700,
                   "sft_batch": 64, "sft_lr": 3e-3, "sft_problems": 20000, "data_seed": 100},
}


def cache_root() -> Path:
    return Path(os.environ.get("GRPO_CACHE", Path.home() / ".cache" / "grpo"))


def resolve_demo_model(spec: str, cache_dir: Path | None = None) -> Path:
    name = spec.removeprefix("demo:")
    if name not in BUILDS:
        raise UserError(f"model.path: unknown demo model {spec!r}; built-in demo models: "
                        f"{', '.join('demo:' + n for n in BUILDS)}")
    settings = BUILDS[name]
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    target = (cache_dir or cache_root()) / f"demo-{name}-{key}"
    if (target / "config.json").is_file():
        return target
    print(f"building the demo model {spec} into {target} (once; about a minute on a laptop CPU)", flush=True)
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build_demo_model(tmp, settings)
    if not (target / "config.json").is_file():  # another process may have finished first; keep theirs
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_demo_model(out_dir: Path, settings: dict) -> dict:
    import torch

    from grpo.demo.model import build_tiny_llama
    from grpo.demo.task import PROMPT_TEMPLATE, make_problems
    from grpo.demo.tokenizer import build_char_tokenizer
    from grpo.sft import supervised_fine_tune

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tokenizer = build_char_tokenizer()
    model = build_tiny_llama(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                             seed=settings["seed"], hidden=settings["hidden"], layers=settings["layers"],
                             heads=settings["heads"])
    problems = make_problems(settings["sft_problems"], seed=settings["data_seed"])
    pairs = [(PROMPT_TEMPLATE.format(**p), p["solution"]) for p in problems]
    start = time.perf_counter()
    stats = supervised_fine_tune(
        model, tokenizer, pairs, steps=settings["sft_steps"], batch_size=settings["sft_batch"], lr=settings["sft_lr"],
        seed=settings["seed"],
        log=lambda s, loss: print(f"  sft step {s}/{settings['sft_steps']}  loss {loss:.3f}", flush=True))
    stats["seconds"] = round(time.perf_counter() - start, 1)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "demo_build.json").write_text(json.dumps({"settings": settings, "sft": stats}, indent=2))
    return stats
