"""`grpo eval`: load the sets (sets.py), sample and grade (run.py), score (metrics.py), write (summary.py)."""
