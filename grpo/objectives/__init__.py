"""The RL math as pure functions over tensors: advantages and losses. No model, engine or loop in here."""
