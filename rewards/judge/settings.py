"""rewards[].args of the `judge` reward, and what `grpo validate` says is wrong with them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from rewards.args import read_checked, unknown_keys
from rewards.errors import UserError
from rewards.judge.constitution import read_constitution
from rewards.judge.prompt import SCORE_PATTERN, TEMPLATE, TEMPLATE_VERSION, pattern_problems, template_problems

WHERE = "rewards[judge].args"


@dataclass
class JudgeSettings:
    constitution: str = ""  # the constitution YAML (rewards/judge/constitution.py has its format)
    backend: str = "openai"  # openai: an OpenAI-compatible endpoint; transformers: a local model on this device
    model: str = ""  # the served model's name (openai), or a model directory / hub id / demo:NAME (transformers)
    base_url: str = ""  # openai: e.g. http://127.0.0.1:8000/v1 (a `vllm serve`) or a hosted API's
    api: str = "chat"  # chat: a user turn (chat template); completions: the prompt as plain text (a base model)
    # The NAME of the environment variable holding the API key (e.g. OPENAI_API_KEY), never the key: a recipe is
    # copied into every run directory. None: no Authorization header (a local server).
    api_key_env: str | None = None
    template: str = TEMPLATE  # the judge's prompt; fields {prompt} {completion} {principle} {instruction} {low} {high}
    template_version: str = TEMPLATE_VERSION  # a name for the template's wording; a changed template needs a new one
    score_pattern: str = SCORE_PATTERN  # a regex with one group around the number; the reply's last match counts
    max_tokens: int = 256  # the judge's reply
    temperature: float = 0.0
    concurrency: int = 8  # openai: requests in flight at once
    batch_size: int = 16  # transformers: prompts per generate call
    retries: int = 3  # openai: further tries of a request that failed in a way worth retrying (refused, 429, 5xx)
    backoff_s: float = 1.0  # the first retry's wait; doubling after each, +-25% jitter, at most 30 s
    request_timeout_s: float = 60.0
    max_completion_chars: int = 8000  # longer completions reach the judge as their head and tail
    cache_size: int = 100_000  # judgements kept, keyed by (prompt, completion, principle, judge); 0: no cache
    trust_remote_code: bool = False


def read_settings(settings: dict[str, Any] | None) -> JudgeSettings:
    return read_checked(JudgeSettings, settings, settings_problems)


def settings_problems(settings: dict[str, Any] | None) -> list[str]:
    """Every problem with the recipe's args, without loading a model or calling the endpoint."""
    settings = dict(settings or {})
    problems = []
    if "api_key" in settings:
        problems.append(f"{WHERE}.api_key: a key is never written in a recipe (it is copied into every run "
                        f"directory); put it in an environment variable and name that variable in api_key_env")
        settings.pop("api_key")
    unknown = unknown_keys(settings, JudgeSettings, WHERE)
    if unknown:  # the settings cannot be read further
        return problems + unknown
    s = JudgeSettings(**settings)
    if s.backend not in ("openai", "transformers"):
        problems.append(f"{WHERE}.backend: {s.backend!r} is not openai (an OpenAI-compatible endpoint) or "
                        f"transformers (a local model)")
    if s.api not in ("chat", "completions"):
        problems.append(f"{WHERE}.api: {s.api!r} is not chat or completions")
    if not isinstance(s.model, str) or not s.model:
        problems.append(f"{WHERE}.model: required; the served model's name (openai) or a model directory, hub id "
                        f"or demo:NAME (transformers)")
    if s.backend == "openai":
        if not isinstance(s.base_url, str) or not s.base_url.startswith(("http://", "https://")):
            problems.append(f"{WHERE}.base_url: {s.base_url!r} is not an http(s) URL; give the endpoint's base, "
                            f"e.g. http://127.0.0.1:8000/v1 for `vllm serve`")
        if s.api_key_env is not None and not (isinstance(s.api_key_env, str) and s.api_key_env.isidentifier()):
            problems.append(f"{WHERE}.api_key_env: {s.api_key_env!r} is not an environment variable's name")
    if not isinstance(s.template, str) or not isinstance(s.template_version, str) or not s.template_version:
        problems.append(f"{WHERE}.template / template_version: both are text")
    else:
        problems += template_problems(s.template, f"{WHERE}.template")
        if s.template != TEMPLATE and s.template_version == TEMPLATE_VERSION:
            problems.append(f"{WHERE}.template_version: the template is your own, so name its version (e.g. "
                            f"my-judge-v1): the run's record then says which words scored it")
    problems += pattern_problems(s.score_pattern, f"{WHERE}.score_pattern") if isinstance(s.score_pattern, str) \
        else [f"{WHERE}.score_pattern: a regular expression (text)"]
    for key, low in (("max_tokens", 1), ("concurrency", 1), ("batch_size", 1), ("retries", 0),
                     ("max_completion_chars", 100), ("cache_size", 0)):
        value = getattr(s, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            problems.append(f"{WHERE}.{key}: must be an integer >= {low}, got {value!r}")
    for key, low in (("temperature", 0.0), ("backoff_s", 0.0), ("request_timeout_s", 0.001)):
        value = getattr(s, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < low:
            problems.append(f"{WHERE}.{key}: must be a number >= {low:g}, got {value!r}")
    _, found = read_constitution(s.constitution, f"{WHERE}.constitution") if isinstance(s.constitution, str) \
        else (None, [f"{WHERE}.constitution: a file path"])
    return problems + found


def api_key(s: JudgeSettings) -> str | None:
    """The key from the environment variable the recipe names; a clear error when it is named but unset."""
    if s.api_key_env is None:
        return None
    key = os.environ.get(s.api_key_env, "")
    if not key:
        raise UserError(f"{WHERE}.api_key_env: the environment variable {s.api_key_env} is not set (or empty); "
                        f"export it with the judge's API key, or remove api_key_env for a server without keys")
    return key
