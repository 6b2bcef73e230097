"""Reward functions: the contract, the registry, and the built-ins.

The contract (shared by built-ins and plugins):

    def my_reward(prompts: list[str], completions: list[str], **columns) -> list[float | None]

- ``prompts`` and ``completions`` have one entry per completion (B*G entries; a prompt is repeated G times).
- Every dataset column arrives as a keyword argument, also one entry per completion (``answer=[...]``).
- The trainer adds ``completion_ids`` (token ids), ``finish_reasons`` ("stop" / "length") and
  ``max_new_tokens`` (an int); with a tool-using environment, ``tool_calls`` (per completion, a list of
  ``{"call", "output", "error", "seconds"}``) and ``final_text`` (what the model wrote after the last tool output:
  the math reward reads its answer there). The completion itself is the whole transcript, tool outputs included.
  Accept ``**kwargs`` so new columns never break a reward.
- Return one float per completion, or None where the reward does not apply to that completion. Or return a
  mapping that says more: named sub-scores, counts and the completions it failed to score (rewards/output.py:
  {"rewards": [...], "parts": {...}, "counts": {...}, "failed": k, "failure": "why"}).
- Recipe ``args`` are passed as extra keyword arguments.
- Optional attributes on the function say what it is: ``fn.measures_correctness = True`` when 1.0 means
  "right" (training then logs ``accuracy`` from it, and eval can grade with it); ``fn.extract_answer`` a
  ``str -> str | None`` giving the answer it judged (eval's majority vote counts those); ``fn.shaping = True``
  for a reward that pays for form rather than for being right (format, length), ``fn.learned = True`` for a
  model's opinion (a reward model, a judge): the reward-hacking alarms (grpo/hacking/) watch those two kinds.

A reward never needs to guard against its own crashes: the scorer catches an exception, scores the
offending completion 0 and counts it in the metrics. It should still return 0.0 (not raise) on a
model's malformed output, since that is the normal case during RL.
"""
