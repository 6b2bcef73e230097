"""Helpers around the RL loop: a supervised warm start (sft) and GGUF -> Hugging Face conversion (gguf)."""
