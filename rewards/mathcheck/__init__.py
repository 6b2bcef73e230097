"""Internals of the math answer checker (rewards.math): extraction, normalisation, comparison."""
