"""`grpo train`: the loop (trainer.py) and what it calls once per step: collection (rollouts.py) into episodes and a per-token batch (episodes.py), the update, checkpoints, metrics."""
