"""The built-in demo model, `demo:tiny-arith`: a ~1M-parameter Llama with a character tokenizer, given a
supervised warm start on the demo word problems (grpo.demo.task) by a sloppy teacher that works 30% of the
problems out and guesses the answer of the other 70%. Shipped in the package; rebuilt and cached when its
settings change.

Why: the hub is not reachable everywhere this tool must run, and RL needs a starting policy that is right
sometimes (reward variance within groups) and wrong often (room to learn). Imitating that teacher, the model can
work problems out (right most of the time) but usually guesses (right one time in ten): the reward separates
the two, and GRPO on a CPU learns within a couple of minutes to work every problem out."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from grpo.errors import UserError
from grpo.io import atomic_dir, write_json

# Bump when the build code changes in a way the settings below do not show (the task generator, the tokenizer,
# the SFT loop): the version is part of the cache key, so every cache built by older code is left unused.
BUILD_VERSION = 2

BUILDS = {
    # name: settings that define the build; any change gives a new cache key, so a stale cache is never used
    "tiny-arith": {"seed": 0, "hidden": 128, "layers": 4, "heads": 2, "sft_steps": 2000, "sft_batch": 32,
                   "sft_lr": 3e-3, "sft_warmup": 30, "sft_schedule": "cosine", "sft_prompt_loss_weight": 0.0,
                   "sft_problems": 20000, "data_seed": 100, "sft_guess_fraction": 0.7},
    # The tool demo (grpo/demo/products.py): 2-digit products; the teacher calls the calculator on half of them.
    "tiny-tools": {"task": "products", "seed": 0, "hidden": 128, "layers": 4, "heads": 2, "sft_steps": 1500,
                   "sft_batch": 32, "sft_lr": 3e-3, "sft_warmup": 30, "sft_schedule": "cosine",
                   "sft_prompt_loss_weight": 0.0, "sft_problems": 20000, "data_seed": 100, "sft_call_fraction": 0.5},
}


def cache_root() -> Path:
    """$GRPO_CACHE, else ~/.cache/grpo."""
    return Path(os.environ.get("GRPO_CACHE") or Path.home() / ".cache" / "grpo")


def cache_key(settings: dict) -> str:
    blob = json.dumps({"version": BUILD_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def resolve_demo_model(spec: str, cache_dir: Path | None = None) -> Path:
    """The directory of the built-in model `spec` ("demo:tiny-arith"), building it on first use.

    The build goes to a temporary directory renamed into place only when complete, so an interrupted build
    never leaves a cache entry that looks finished."""
    name = spec.removeprefix("demo:")
    if name not in BUILDS:
        raise UserError(f"model.path: unknown demo model {spec!r}; built-in demo models: "
                        f"{', '.join('demo:' + n for n in BUILDS)}. Use one of those, or a model directory.")
    settings = BUILDS[name]
    shipped = shipped_copy(name, settings)
    if shipped is not None and not os.environ.get("GRPO_DEMO_REBUILD"):
        return shipped
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    target = root / f"demo-{name}-{cache_key(settings)}"
    if (target / "config.json").is_file():
        return target
    print(f"building the demo model {spec} into {target} (once; about 6 minutes on 2 CPU cores)", flush=True)
    try:
        # replace=True: a directory without config.json is debris, not a model. An interrupted or failed build
        # leaves nothing behind that a later run could trip on.
        with atomic_dir(target, replace=True) as tmp:
            build_demo_model(tmp, settings)
            if (target / "config.json").is_file():  # another process finished the same build first; keep theirs
                raise _AlreadyBuilt
    except _AlreadyBuilt:
        pass
    return target


class _AlreadyBuilt(Exception):
    """Abandons our copy of a build that another process completed first."""


SHIPPED = Path(__file__).resolve().parent / "shipped"


def shipped_copy(name: str, settings: dict) -> Path | None:
    """The weights built by this very code and settings, shipped in the package (4 MB) so the demo starts at
    once; None when the settings changed since (then the model is built and cached as usual).
    `python -m grpo.demo` rebuilds the shipped copy; GRPO_DEMO_REBUILD=1 ignores it."""
    path = SHIPPED / name
    try:
        built = json.loads((path / "demo_build.json").read_text())
    except (OSError, ValueError):
        return None
    return path if built.get("cache_key") == cache_key(settings) and (path / "config.json").is_file() else None


def build_demo_model(out_dir: Path, settings: dict) -> dict:
    """Tokenizer + seeded tiny Llama + SFT warm start, saved in Hugging Face format to `out_dir`."""
    from grpo.demo.model import build_tiny_llama
    from grpo.demo.tokenizer import build_char_tokenizer
    from grpo.tools.sft import supervised_fine_tune

    tokenizer = build_char_tokenizer()
    model = build_tiny_llama(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                             seed=settings["seed"], hidden=settings["hidden"], layers=settings["layers"],
                             heads=settings["heads"])
    pairs = warm_start_pairs(settings)
    steps = settings["sft_steps"]
    start = time.perf_counter()

    def log(step: int, loss: float) -> None:
        print(f"  demo model warm start: step {step}/{steps}  loss {loss:.3f}  "
              f"({time.perf_counter() - start:.0f} s)", flush=True)

    stats = supervised_fine_tune(
        model, tokenizer, pairs, steps=steps, batch_size=settings["sft_batch"], lr=settings["sft_lr"],
        warmup=settings["sft_warmup"], schedule=settings["sft_schedule"],
        prompt_loss_weight=settings["sft_prompt_loss_weight"], seed=settings["seed"], log=log, log_every=50)
    stats["seconds"] = round(time.perf_counter() - start, 1)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_json(out_dir / "demo_build.json", {"version": BUILD_VERSION, "settings": settings,
                                             "cache_key": cache_key(settings), "sft": stats})
    return stats


def warm_start_pairs(settings: dict) -> list:
    """The teacher's (prompt, target) pairs of a build's task: the word problems (a target string) or the tool
    demo's products (targets as (text, trained) pieces, the calculator's output untrained)."""
    if settings.get("task", "arith") == "products":
        from grpo.demo import products

        return products.warm_start_pairs(settings["sft_problems"], settings["data_seed"],
                                         settings["sft_call_fraction"], settings.get("sft_guess", "any"))
    from grpo.demo.task import PROMPT_TEMPLATE, make_problems, with_guesses

    problems = with_guesses(make_problems(settings["sft_problems"], seed=settings["data_seed"]),
                            settings.get("sft_guess_fraction", 0.0), seed=settings["data_seed"] + 1)
    return [(PROMPT_TEMPLATE.format(**p), p["solution"]) for p in problems]
