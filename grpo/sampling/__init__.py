"""Samplers: one interface (base.Sampler), a transformers backend (hf.py) and a vLLM backend (vllm.py)."""
