"""grpo: reinforcement learning on verifiable rewards for language models."""

__version__ = "0.1.0"
