"""`grpo train`: the loop (trainer.py) and what it calls once per step: rollouts, update, checkpoint, metrics."""
