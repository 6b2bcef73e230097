"""`judge`: an LLM judge scores each completion against a written constitution (RLAIF, constitutional AI).

    rewards:
      - name: judge
        timeout_s: 600                          # a judge takes seconds per batch, not the default 30
        args:
          constitution: recipes/constitutions/helpful-honest.yaml
          backend: openai                       # or transformers: a local model on the trainer's device
          base_url: http://127.0.0.1:8000/v1    # a `vllm serve`, or a hosted API
          model: Qwen/Qwen2.5-7B-Instruct
          api_key_env: OPENAI_API_KEY           # the variable's NAME; the key never goes in a recipe

Each (completion, principle) pair is one judgement: the prompt (prompt.py, versioned by template_version) is sent,
the reply's last "Score: N" is read, mapped to [0, 1] on the principle's scale, and the principles' weighted mean is
the reward. Per-principle scores are logged as reward/judge/<principle>/mean; the judge's calls, retries,
cached judgements, failures and seconds as reward/judge/<count> (rewards/output.py is the contract). Settings:
settings.py; the constitution file: constitution.py; the endpoint client: endpoint.py; a local judge: local.py.

This package imports nothing from grpo (a demo:NAME model path is resolved by grpo.modeling when asked for).
"""

from __future__ import annotations

from typing import Any

from rewards.judge.constitution import load_constitution
from rewards.judge.endpoint import Endpoint, preflight
from rewards.judge.scorer import Judge, endpoint_asker, local_asker
from rewards.judge.settings import api_key, read_settings, settings_problems


def make_judge(settings: dict[str, Any] | None, device: Any, dtype: Any) -> Judge:
    """The setup-time factory: read the constitution, connect the backend (loading a local model once)."""
    s = read_settings(settings)
    constitution = load_constitution(s.constitution, "rewards[judge].args.constitution")
    if s.backend == "openai":
        endpoint = Endpoint(s.base_url, s.model, s.api, api_key(s), s.max_tokens, s.temperature,
                            s.request_timeout_s, s.retries, s.backoff_s)
        ask = endpoint_asker(endpoint, s.concurrency)
    else:
        from rewards.judge.local import LocalJudge

        ask = local_asker(LocalJudge(s.model, s.api, device, dtype, s.max_tokens, s.temperature, s.batch_size,
                                     s.trust_remote_code))
    return Judge(s, constitution, ask)


def planned_model(settings: dict[str, Any] | None) -> dict[str, Any] | None:
    """What `grpo plan` counts on the trainer's device: a local judge's model (an endpoint's runs elsewhere)."""
    s = dict(settings or {})
    if s.get("backend", "openai") != "transformers":
        return None
    return {"path": str(s.get("model") or ""), "arg": "model", "batch_size": s.get("batch_size", 16),
            "max_tokens": None, "generates": int(s.get("max_tokens", 256))}


def served_judge_warnings(settings: dict[str, Any] | None, timeout_s: float | None) -> list[str]:
    """`grpo validate`'s warnings for a judge: a time limit too short for one, an endpoint that does not answer or
    does not serve the model. Only for settings that are otherwise fine (errors are settings_problems')."""
    if settings_problems(settings):
        return []
    s = read_settings(settings)
    warnings = []
    if timeout_s and timeout_s < 120:
        warnings.append(f"timeout_s: {timeout_s:g} s for a batch of judgements (one per completion and principle) "
                        f"is short; past it the whole batch scores 0. Give the judge e.g. timeout_s: 600")
    if s.backend == "openai":
        try:
            key = api_key(s)
        except Exception as exc:  # noqa: BLE001 - an unset key variable is said as the warning itself
            return warnings + [str(exc)]
        warnings += preflight(s.base_url, s.model, key)
    return warnings


# Read by rewards/scoring.py (a factory, built once at setup, its args checked by settings_problems), grpo.plan
# (planned_model), grpo validate (preflight) and the reward-hacking alarms (learned: a model's opinion, compared
# there with correctness).
make_judge.reward_factory = True
make_judge.settings_problems = settings_problems
make_judge.planned_model = planned_model
make_judge.preflight = served_judge_warnings
make_judge.learned = True
