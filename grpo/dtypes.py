"""The floating-point types a recipe may name: one table, read by the config, the rules, the planner, the CLIs and
the model code (which turns a name into a torch dtype only where torch is already loaded)."""

from __future__ import annotations

from typing import Any, Literal

DTypeName = Literal["float32", "bfloat16", "float16"]
DTYPES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}  # name -> bytes per element


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def dtype_name(dtype: Any) -> str:
    """torch.bfloat16 -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")
