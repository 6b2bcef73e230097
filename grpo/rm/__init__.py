"""`grpo rm`: a reward model trained on preference pairs with the Bradley-Terry loss (the middle stage of
SFT -> reward model -> RL). The model it writes loads with AutoModelForSequenceClassification and rewards a policy
through the `reward_model` reward (rewards/reward_model.py), which reads text the same way (pair_text).

    config.py   the recipe's schema and rules; read with grpo.recipe's reader
    data.py     preference rows -> checked, tokenized pairs; the held-out split
    model.py    a causal LM (new scalar head) or a sequence-classification checkpoint, in the master dtype
    loss.py     Bradley-Terry loss and pairwise accuracy (pure)
    checkpoint.py  atomic checkpoints and exact resume
    train.py    the loop
    command.py  run_rm_command(recipe_path, overrides) -> the model's directory
    arith_pairs.py  preference pairs over the demo's word problems (tests; trying grpo rm on a CPU)

grpo.rm imports nothing from grpo.train (train, eval, tools and rm sit side by side).
"""
