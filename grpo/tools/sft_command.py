"""`grpo sft`: a supervised warm start from the command line (the demo model is built with the same code)."""

from __future__ import annotations

from pathlib import Path

from grpo.data import check_template, load_rows
from grpo.errors import UserError
from grpo.io import atomic_dir


def run_sft_command(model: str, data: str, output: str, prompt_template: str, target_template: str, steps: int,
                    batch_size: int, lr: float, seed: int) -> None:
    from grpo.modeling import load_tokenizer, resolve_model_path
    from grpo.tools.sft import supervised_fine_tune
    from transformers import AutoModelForCausalLM

    rows = load_rows(data)
    problems = (check_template(prompt_template, rows, "--prompt-template", data)
                + check_template(target_template, rows, "--target-template", data))
    if problems:
        raise UserError("; ".join(problems))
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--output {output} exists and is not empty; choose a new directory (nothing is overwritten)")
    path = resolve_model_path(model)
    tokenizer = load_tokenizer(path)
    policy = AutoModelForCausalLM.from_pretrained(path)
    pairs = [(prompt_template.format_map(r), target_template.format_map(r)) for r in rows]
    stats = supervised_fine_tune(policy, tokenizer, pairs, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                 log=lambda s, loss: print(f"sft step {s}/{steps}  loss {loss:.3f}", flush=True))
    with atomic_dir(out) as tmp:
        policy.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    print(f"loss {stats['first_loss']:.3f} -> {stats['last_loss']:.3f}; model written to {out}")
