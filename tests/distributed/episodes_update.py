"""one_update.py's comparison on hand-built multi-segment episodes: model segments (sampled ids and log-probs,
trained) with environment segments between them (context only), of a different structure on each rank, so the
ranks hold different numbers of model and environment tokens. For tests/test_episodes.py:

    python episodes_update.py MODEL_DIR OUT_DIR          # one process: the reference
    torchrun --nproc-per-node 2 episodes_update.py MODEL_DIR OUT_DIR
"""

import sys

import torch

from grpo.train.episodes import Episode, environment_segment, model_segment
from one_update import main

CASES = [  # as one_update.CASES: (name, strategy, aggregation, beta, mu[, more TrainConfig keys])
    ("ddp-token_mean-beta0.1", "ddp", "token_mean", 0.1, 1),
    ("fsdp-sequence_mean-mu2", "fsdp", "sequence_mean", 0.0, 2),
    ("fsdp-constant-kl_reward", "fsdp", "constant", 0.1, 1,
     dict(advantage="reinforce_pp_baseline", kl_in="reward", kl_estimator="k1")),
    ("ddp-gspo-mu2-trainer-tis", "ddp", "sequence_mean", 0.0, 2,
     dict(loss="gspo", clip_low=3e-4, clip_high=4e-4, old_logprobs="trainer", sampler_correction="tis",
          correction_level="sequence", correction_cap=2.0, near=True)),
    ("fsdp-entropy-shared_prompt", "fsdp", "token_mean", 0.1, 1, dict(entropy_coef=0.01, packing="shared_prompt")),
    ("ddp-mis-sequences", "ddp", "token_mean", 0.0, 2,
     dict(sampler_correction="mis", correction_cap=1.5, near=True, packing="sequences")),
]

# Each group's segment structure: "m" a model segment, "e" an environment segment, with their lengths. Groups 0 and
# 1 go to rank 0, groups 2 and 3 to rank 1: one-turn and two-turn there, three-turn and a trailing tool call here.
STRUCTURES = [
    [("m", 3)],
    [("m", 2), ("e", 4), ("m", 3)],
    [("m", 2), ("e", 1), ("m", 1), ("e", 3), ("m", 2)],
    [("m", 4), ("e", 2)],
]


def multi_segment_batch(tok) -> list[Episode]:
    """8 episodes of 4 prompts (groups of 2), with fixed advantages and sampler log-probs on model tokens."""
    gen = torch.Generator().manual_seed(0)
    vocab = len(tok)
    episodes = []
    for g, structure in enumerate(STRUCTURES):
        prompt = tok(f"{g} + {g} =").input_ids
        for k in range(2):
            segments = []
            for kind, n in structure:
                ids = torch.randint(3, vocab, (n + k,), generator=gen).tolist()  # the group's two differ in length
                segments.append(model_segment(ids, (-torch.rand(len(ids), generator=gen) * 2).tolist())
                                if kind == "m" else environment_segment(ids))
            episodes.append(Episode(prompt, segments, group_id=g, policy_version=3, advantage=1.0 if k else -0.5,
                                    reward=float((3 * g + k) % 4) / 3))
    return episodes


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], cases=CASES, make_batch=multi_segment_batch)
