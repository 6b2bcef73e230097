"""Environments: what answers a model's tool call in the middle of its reasoning (multi-turn episodes).

The contract (shared by built-ins and plugins, which import nothing from grpo):

    def my_environment(row: dict, transcript: str, **args) -> str | dict | None
    my_environment.stop = ["</call>"]   # the strings that end a tool call

- The sampler stops a model turn at one of ``stop`` (kept in the transcript) and calls the environment with the
  dataset row and the episode's text after the prompt so far (the model's turns and earlier observations).
- Return the observation to append (a str), or ``{"observation": str, "error": bool}`` to count a failed call
  (a syntax error, an exception in the user's code), or None when the transcript holds no call to answer: the
  episode then ends there.
- Recipe ``environment.args`` arrive as keyword arguments. Keep no state between calls: everything an episode did
  is in its transcript (the python environment replays earlier cells to keep its variables).
- An environment never needs to guard against its own crashes: the sampler turns an exception into an error
  observation and counts it. It must bound its own cost on any text the model writes.

Built in (entry-point group ``grpo.environments``): ``calculator`` and ``python``.
"""

from __future__ import annotations

# What an environment's reply becomes: the observation text and whether the call failed.
Reply = tuple[str, bool]

MAX_OBSERVATION_CHARS = 64_000  # any longer reply is cut before it is tokenized (the token budget cuts again)


def as_reply(value: object) -> Reply | None:
    """An environment's return value as (observation, error), or None for "no call: the episode ends". Anything
    else (a number, a dict without an observation) is the environment's bug, reported as an error observation."""
    if value is None:
        return None
    if isinstance(value, str):
        return value[:MAX_OBSERVATION_CHARS], False
    if isinstance(value, dict) and isinstance(value.get("observation"), str):
        return value["observation"][:MAX_OBSERVATION_CHARS], bool(value.get("error", False))
    return f"environment error: it returned {type(value).__name__}, not a str or {{'observation': str}}", True
