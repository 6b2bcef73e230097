"""Reading a recipe: YAML mapped onto grpo.config's dataclasses, with `a.b=value` overrides.

Loading never stops at the first problem: unknown keys (with a "did you mean"), wrong types, bad choices
and impossible combinations are all collected and raised together as one ConfigError, before any model
or dataset is loaded.

An override's text is read as YAML only where the field wants a number, a bool, a list or a mapping: a value
for a string field stays the exact text typed, so `data.prompt_template={question}` is the template, not a
YAML mapping.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from grpo.config import EvalConfig, RecipeConfig
from grpo.errors import ConfigError, UserError
from grpo.rules import eval_rules, recipe_rules


@dataclass(frozen=True)
class OverrideText:
    """The text after `=` in a command-line override, parsed only once the field's type is known."""

    text: str

    def as_yaml(self) -> Any:
        try:
            return yaml.safe_load(self.text) if self.text else ""
        except yaml.YAMLError:
            return self.text


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> RecipeConfig:
    """Read a recipe (or start from defaults when path is None), apply overrides, check everything."""
    cfg, problems = parse_recipe(path, overrides)
    if problems:
        raise ConfigError(problems, str(path) if path else "defaults")
    return cfg


def parse_recipe(path: str | Path | None, overrides: list[str] = ()) -> tuple[RecipeConfig, list[str]]:
    """The config built from every valid value, and the list of problems found (empty when all is well).
    An unreadable file is the one problem that stops here, since nothing else can be checked without it."""
    cfg, problems = read_structure(path, overrides)
    return cfg, problems + recipe_rules(cfg)


def load_eval_section(path: str | Path | None, values: dict[str, Any] | None = None,
                      overrides: list[str] = ()) -> tuple[EvalConfig, RecipeConfig]:
    """A recipe read for `grpo eval`: its eval section (with `values`, dotted keys from the command line, on
    top) checked by the eval rules. The training sections are read for their structure only, so a recipe may
    hold just an `eval:` section."""
    cfg, problems = read_structure(path, overrides, values)
    problems += eval_rules(cfg.eval)
    if problems:
        raise ConfigError(problems, str(path) if path else "command line")
    return cfg.eval, cfg


def read_structure(path: str | Path | None, overrides: list[str] = (), values: dict[str, Any] | None = None,
                   schema: type = RecipeConfig) -> tuple[Any, list[str]]:
    """Keys and types only: unknown keys, wrong types, bad choices. `values` set dotted keys to Python values
    (from typed command-line options) after the overrides. `schema`: the recipe's dataclass (grpo train's by
    default; grpo rm reads its own with the same reader)."""
    raw: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    problems: list[str] = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(f"override '{item}': expected key=value, e.g. train.lr=1e-5")
            continue
        _set(raw, key, OverrideText(text))
    for key, value in (values or {}).items():
        if value is not None:
            _set(raw, key, value)
    return _build(schema, raw, "", problems), problems


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"recipe {path}: no such file. Give the path of a YAML recipe, e.g. recipes/tiny.yaml.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"recipe {path}: not valid YAML ({exc}). Fix the syntax at the line shown.") from exc
    if not isinstance(data, dict):
        raise UserError(f"recipe {path}: the top level must be a mapping of keys, got {type(data).__name__}.")
    return data


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _build(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    """Map a dict onto dataclass `cls`, collecting every problem; returns an instance built from what was valid."""
    if isinstance(data, OverrideText):
        data = data.as_yaml()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{prefix or 'recipe'}: expected a mapping of keys, got {data!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            problems.append(_unknown_key(str(key), prefix, names))
            continue
        ok, converted = _convert(hints[key], value, where, problems)
        if ok:
            values[key] = converted
    return cls(**values)


def _unknown_key(key: str, prefix: str, names: list[str]) -> str:
    guess = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean '{prefix}{guess[0]}'?)" if guess else ""
    if not guess and not prefix:  # `steps=3` at the top level: say which section holds that key
        owners = [f"{section}.{key}" for section in _SECTIONS if key in _section_keys(section)]
        hint = f" (did you mean '{owners[0]}'?)" if owners else ""
    return f"{prefix}{key}: unknown key{hint}. Known keys here: {', '.join(names)}"


_SECTIONS = [f.name for f in dataclasses.fields(RecipeConfig)]


def _section_keys(section: str) -> set[str]:
    tp = typing.get_type_hints(RecipeConfig)[section]
    return {f.name for f in dataclasses.fields(tp)} if dataclasses.is_dataclass(tp) else set()


def _convert(tp: Any, value: Any, where: str, problems: list[str]) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(value, OverrideText):
        if tp is str or origin is Literal and value.text in args:
            _warn_escapes(where, value.text)
            return _convert(tp, value.text, where, problems)  # the exact text typed
        if origin in (Union, types.UnionType) and str in args:
            return _convert(tp, None if value.text in ("null", "~") else value.text, where, problems)
        value = value.as_yaml()
    if dataclasses.is_dataclass(tp):
        return True, _build(tp, value, where + ".", problems)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where, problems)
    if origin is Literal:
        if value in args:
            return True, value
        guess = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f" (did you mean '{guess[0]}'?)" if guess else ""
        problems.append(f"{where}: {value!r} is not one of {', '.join(map(str, args))}{hint}")
        return False, None
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {value!r}. Write it as [a, b] or a YAML list.")
            return False, None
        out = []
        for i, item in enumerate(value):
            ok, converted = _convert(args[0], item, f"{where}[{i}]", problems)
            if ok:
                out.append(converted)
        return True, out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return False, None
        return True, dict(value)
    if tp is Any:
        return True, value
    if tp is bool:
        if isinstance(value, bool):
            return True, value
        problems.append(f"{where}: expected true or false, got {value!r}")
        return False, None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value
        problems.append(f"{where}: expected an integer, got {value!r}")
        return False, None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML reads "1e-6" (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                pass
        problems.append(f"{where}: expected a number, got {value!r}")
        return False, None
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return True, str(value)
        problems.append(f"{where}: expected a string, got {value!r}")
        return False, None
    return True, value


def _warn_escapes(where: str, text: str) -> None:
    r"""A shell passes `'Q: {question}\nA:'` with a backslash and an n, not a newline; the value is kept as typed
    (a regex needs its backslashes), but a user who meant a newline is told how to get one."""
    if re.search(r"\\[nt]", text):
        warnings.warn(f"override {where}: the value holds a literal backslash-n or backslash-t, kept as typed. For a "
                      f"newline or tab, write the value in the recipe file (YAML \"...\\n...\") or use $'...' "
                      f"quoting in bash.", ConfigWarning, stacklevel=2)


class ConfigWarning(UserWarning):
    """Something in a recipe or override that is allowed but probably not meant."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict for writing the resolved recipe beside a run."""
    return dataclasses.asdict(cfg)
